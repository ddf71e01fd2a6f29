"""Per-token attribution as strips of tokens (L207 on token-id models, evidence ``token_attribution``): each token
of a prompt shaded by its Integrated Gradients score, on a diverging scale centred on zero."""

from __future__ import annotations

from typing import Any

from .figures import Figure, _number, _numbers, _title, render_svg
from .unit_figures import TOKEN_NOTE, draw_token_strips, token_strip_lines


def token_attribution_figures(finding: dict, prefix: str) -> list[Figure]:
    """One strip per sample of ``evidence["token_attribution"]``; nothing when the key is missing or malformed."""
    evidence = finding.get("evidence") if isinstance(finding, dict) else None
    if not isinstance(evidence, dict):
        return []
    rows = [row for row in evidence.get("token_attribution") or [] if _row(row)]
    if not rows:
        return []
    strips = []
    for row in rows:
        scale = max(abs(score) for score in row["scores"]) or 1.0
        header = (f"sample {row['sample']}: f(clean) - f(baseline) = {row['behaviour_difference']:.3g}, "
                  f"completeness gap {row['completeness_gap']:.2g}")
        # 0 red (lowers the behaviour), 0.5 white, 1 blue (raises it)
        strips.append((header, row["tokens"], [0.5 + 0.5 * score / scale for score in row["scores"]],
                       [abs(score) / scale > 0.6 for score in row["scores"]]))
    lines = token_strip_lines(strips)

    def draw(figure: Any) -> None:
        draw_token_strips(figure, strips, "RdBu", lines)
        _title(figure, "Which input tokens carry the behaviour")

    behaviour = evidence.get("behaviour")
    what = behaviour if isinstance(behaviour, str) and behaviour else "behaviour"
    shown = rows[0]["first_position"]
    caption = (f"Integrated Gradients of the {what}, from the embedding of the corrupted prompt (the baseline) to "
               f"that of the clean prompt, summed over the embedding per token, for {len(rows)} pair(s); blue tokens "
               "raise the behaviour, red ones lower it, each strip scaled to its largest score; tokens the two "
               "prompts share score zero. The last token is framed in red"
               + (f"; the strip starts at position {shown}" if shown else "")
               + ". The scores of a strip add up to f(clean) - f(baseline) up to the completeness gap. " + TOKEN_NOTE)
    return [Figure(f"{prefix}-token-attribution.svg", "Token attribution", caption,
                   render_svg(prefix + "-token-attribution", draw, (6.4, 0.5 + 0.28 * lines)),
                   sources=("token_attribution",))]


def _row(row: Any) -> bool:
    return (isinstance(row, dict) and isinstance(row.get("tokens"), list) and _numbers(row.get("scores"))
            and len(row["tokens"]) == len(row["scores"]) and all(_number(row.get(k)) for k in
            ("sample", "first_position", "behaviour_difference", "completeness_gap")))
