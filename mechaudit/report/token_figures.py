"""Per-token attribution as strips of tokens (L207 on token-id models, evidence ``token_attribution``): each token
of a prompt shaded by its Integrated Gradients score, on a diverging scale centred on zero."""

from __future__ import annotations

from typing import Any

from .figures import FAIL_COLOR, Figure, _number, _numbers, _title, render_svg, short_label

PER_LINE = 16  # tokens a line


def token_attribution_figures(finding: dict, prefix: str) -> list[Figure]:
    """One strip per sample of ``evidence["token_attribution"]``; nothing when the key is missing or malformed."""
    evidence = finding.get("evidence") if isinstance(finding, dict) else None
    if not isinstance(evidence, dict):
        return []
    rows = [row for row in evidence.get("token_attribution") or [] if _row(row)]
    if not rows:
        return []
    lines = sum(1 + -(-len(row["tokens"]) // PER_LINE) for row in rows)

    def draw(figure: Any) -> None:
        import matplotlib

        colours = matplotlib.colormaps["RdBu"]
        ax = figure.subplots()
        ax.set_axis_off()
        ax.set_xlim(0, PER_LINE)
        ax.set_ylim(lines, 0)
        y = 0.5
        for row in rows:
            scale = max(abs(s) for s in row["scores"]) or 1.0
            ax.text(0, y, f"sample {row['sample']}: f(clean) - f(baseline) = {row['behaviour_difference']:.3g}, "
                    f"completeness gap {row['completeness_gap']:.2g}", fontsize=7, fontweight="bold", va="center")
            y += 1
            for i, (token, score) in enumerate(zip(row["tokens"], row["scores"])):
                x = i % PER_LINE
                shade = 0.5 + 0.5 * score / scale  # 0 red (lowers the behaviour), 0.5 white, 1 blue (raises it)
                ax.text(x + 0.5, y, short_label(token, 6), ha="center", va="center", fontsize=6,
                        family="DejaVu Sans Mono", color="white" if abs(score) / scale > 0.6 else "black",
                        bbox={"boxstyle": "square,pad=0.25", "facecolor": colours(shade),
                              "edgecolor": FAIL_COLOR if i == len(row["tokens"]) - 1 else "#dddddd"})
                if x == PER_LINE - 1 and i < len(row["tokens"]) - 1:
                    y += 1
            y += 1
        _title(figure, "Which input tokens carry the behaviour")

    behaviour = evidence.get("behaviour")
    what = behaviour if isinstance(behaviour, str) and behaviour else "behaviour"
    shown = rows[0]["first_position"]
    caption = (f"Integrated Gradients of the {what}, from the embedding of the corrupted prompt (the baseline) to "
               f"that of the clean prompt, summed over the embedding per token, for {len(rows)} pair(s); blue tokens "
               "raise the behaviour, red ones lower it, each strip scaled to its largest score; tokens the two "
               "prompts share score zero. The last token is framed in red"
               + (f"; the strip starts at position {shown}" if shown else "")
               + ". The scores of a strip add up to f(clean) - f(baseline) up to the completeness gap.")
    return [Figure(f"{prefix}-token-attribution.svg", "Token attribution", caption,
                   render_svg(prefix + "-token-attribution", draw, (6.4, 0.5 + 0.28 * lines)),
                   sources=("token_attribution",))]


def _row(row: Any) -> bool:
    return (isinstance(row, dict) and isinstance(row.get("tokens"), list) and _numbers(row.get("scores"))
            and len(row["tokens"]) == len(row["scores"]) and all(_number(row.get(k)) for k in
            ("sample", "first_position", "behaviour_difference", "completeness_gap")))
