"""Figures of what units and heads do: attention patterns of heads, the activation atlas of a layer, exemplar
token contexts with the activating token marked, and attribution per input column (tables).

Each drawer takes one evidence value (validated first; a malformed one gives no figure) and a file-name prefix,
like those of :mod:`.decomposition_figures`, which registers them by evidence key. Attention patterns follow
Elhage et al. 2021 and Olsson et al. 2022; the atlas, Carter et al. 2019 ("Activation Atlas", Distill).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .figures import (
    FAIL_COLOR,
    NEUTRAL_COLOR,
    PASS_COLOR,
    TITLE_NAME_CHARS,
    Figure,
    _number,
    _title,
    render_svg,
    short_label,
)

MAX_HEADS, MAX_CELLS, MAX_GRID, MAX_CONTEXTS, MAX_COLUMNS = 3, 256, 16, 6, 32
#: How the figures name tokens (mechaudit.loading.token_text), said in every caption that shows tokens.
TOKEN_NOTE = ("Tokens read as the spec's tokenizer or vocabulary decodes them; t17 stands for token id 17 where "
              "neither is declared.")


def _matrix(value: Any, limit: int = 64) -> np.ndarray | None:
    """A finite 2-D array from a rectangular list of lists of numbers, at most ``limit`` a side."""
    if not isinstance(value, list) or not value or len(value) > limit or not isinstance(value[0], list):
        return None
    width = len(value[0])
    if not 0 < width <= limit or not all(isinstance(r, list) and len(r) == width and all(_number(v) for v in r)
                                         for r in value):
        return None
    array = np.asarray(value, dtype=float)
    return array if np.isfinite(array).all() else None


# -- attention patterns --------------------------------------------------------------------------------------------

def attention_figure(entries: Any, prefix: str) -> Figure | None:
    """Per head (at most 3): its mean attention pattern over the samples and that of one example with its tokens."""
    if not isinstance(entries, list):
        return None
    heads, truncated = [], []
    for entry in entries[:MAX_HEADS]:
        if not isinstance(entry, dict) or "component" not in entry:
            continue
        mean, example = _matrix(entry.get("mean")), _matrix(entry.get("example"))
        if mean is None or mean.shape[0] != mean.shape[1]:
            continue
        tokens = entry.get("example_tokens")
        tokens = [str(t) for t in tokens] if isinstance(tokens, list) and example is not None \
            and len(tokens) == example.shape[1] else None
        heads.append((str(entry["component"]), mean, example if example is not None and example.shape == mean.shape
                      else None, tokens, entry.get("samples")))
        if isinstance(entry.get("positions"), int) and entry["positions"] > mean.shape[0]:
            truncated.append(f"{entry['component']}: the first {mean.shape[0]} of {entry['positions']} positions")
    if not heads:
        return None
    columns = 1 + any(h[2] is not None for h in heads)

    def draw(figure: Any) -> None:
        axes = figure.subplots(len(heads), columns, squeeze=False)
        for (name, mean, example, tokens, samples), row in zip(heads, axes):
            panels = [(mean, f"{short_label(name, 24)}: mean over {samples} samples", None)]
            if example is not None:
                panels.append((example, f"{short_label(name, 24)}: one sample", tokens))
            for ax, (matrix, title, labels) in zip(row, panels):
                shown = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
                ax.set_title(title, fontsize=7, fontweight="normal")
                ax.set_xlabel("key position (attended to)", fontsize=7)
                ax.set_ylabel("query position", fontsize=7)
                if labels is not None:
                    ticks = range(0, len(labels), max(1, len(labels) // 16))
                    ax.set_xticks(list(ticks), [short_label(labels[i], 4) for i in ticks], fontsize=5, rotation=90)
                    ax.set_yticks(list(ticks), [short_label(labels[i], 4) for i in ticks], fontsize=5)
                else:
                    ax.tick_params(labelsize=6)
            figure.colorbar(shown, ax=list(row), shrink=0.8, label="attention weight")
        _title(figure, "Attention patterns of the flagged heads")

    described = "; ".join(f"{name}: {_pattern_summary(mean)}" for name, mean, *_ in heads)
    caption = ("Each row of a panel is a query position, each column a key position; the colour is the weight the "
               "query gives the key (rows sum to 1). Left: the mean pattern over the samples; right: one sample, "
               "its tokens on the axes"
               + (f" (only the first positions are shown: {'; '.join(truncated)})" if truncated else "")
               + f". {described}." + (f" {TOKEN_NOTE}" if any(h[3] for h in heads) else ""))
    return Figure(f"{prefix}-attention.svg", "Attention patterns", caption,
                  render_svg(prefix + "-attention", draw, (6.4, 0.5 + 2.7 * len(heads))))


def _pattern_summary(mean: np.ndarray) -> str:
    """Which offset the pattern favours: the mean weight on the previous token, on itself, and on the first."""
    rows = mean.shape[0]
    previous = float(np.mean([mean[i, i - 1] for i in range(1, rows)])) if rows > 1 else 0.0
    own = float(np.mean(np.diag(mean)))
    first = float(mean[1:, 0].mean()) if rows > 1 else 0.0
    return f"mean weight on the previous token {previous:.2f}, on itself {own:.2f}, on the first {first:.2f}"


def token_attention_figure(entries: Any, prefix: str) -> Figure | None:
    """Per head with tokens: the example's tokens, each highlighted by the weight the last position gives it."""
    if not isinstance(entries, list):
        return None
    rows, truncated = [], []
    for entry in entries[:MAX_HEADS]:
        last = _last_row(entry)
        if last is not None:
            rows.append(last[:3])
            truncated.extend([last[3]] if last[3] else [])
    if not rows:
        return None
    strips = [(f"{short_label(name, 40)}: weight from the last position", tokens,
               [float(w) for w in weights], [float(w) > 0.6 for w in weights]) for name, tokens, weights in rows]
    lines = token_strip_lines(strips)

    def draw(figure: Any) -> None:
        draw_token_strips(figure, strips, "Blues", lines)
        _title(figure, "Which tokens the last position attends to")

    strongest = "; ".join(f"{name}: token {int(np.argmax(w))} ({tokens[int(np.argmax(w))]}, weight {w.max():.2f})"
                          for name, tokens, w in rows)
    shown = f" (only its last tokens: {'; '.join(truncated)})" if truncated else ""
    caption = (f"The tokens of one sample in order (16 a line){shown}, each shaded by the attention weight the last "
               f"position (framed in red) gives it, for each flagged head. Strongest: {strongest}. {TOKEN_NOTE}")
    return Figure(f"{prefix}-token-attention.svg", "Token attention", caption,
                  render_svg(prefix + "-token-attention", draw, (6.4, 0.5 + 0.28 * lines)))


def _last_row(entry: Any) -> tuple[str, list[str], np.ndarray, str] | None:
    """(head, tokens, weights the sample's last position gives them, truncation note or "") of one pattern entry:
    its ``last_row`` on sequences longer than the pattern, else the example's last row; None when malformed."""
    if not isinstance(entry, dict) or "component" not in entry:
        return None
    last, tokens = _matrix([entry.get("last_row")]), entry.get("last_row_tokens")
    if last is not None and isinstance(tokens, list) and len(tokens) == last.shape[1]:
        note = f"{entry['component']}: the last {len(tokens)} of {entry.get('positions')} tokens"
        return str(entry["component"]), [str(t) for t in tokens], last[0], note
    example, tokens, positions = _matrix(entry.get("example")), entry.get("example_tokens"), entry.get("positions")
    if example is None or not isinstance(tokens, list) or len(tokens) != example.shape[1] \
            or (isinstance(positions, int) and positions > example.shape[0]):  # truncated: not the last position
        return None
    return str(entry["component"]), [str(t) for t in tokens], example[-1], ""


# -- activation atlas ----------------------------------------------------------------------------------------------

def atlas_figure(atlas: Any, prefix: str) -> Figure | None:
    """The atlas grid: each cell's mean input, titled with its dominant label; cells mostly marked framed in red."""
    if not isinstance(atlas, dict) or not isinstance(atlas.get("cells"), list):
        return None
    grid = atlas.get("grid")
    if not isinstance(grid, int) or not 0 < grid <= MAX_GRID:
        return None
    cells = [(c, image) for c in atlas["cells"][:MAX_CELLS]
             if isinstance(c, dict) and isinstance(c.get("row"), int) and isinstance(c.get("col"), int)
             and 0 <= c["row"] < grid and 0 <= c["col"] < grid and (image := _matrix(c.get("image"))) is not None]
    if not cells:
        return None
    marked = all(_number(c.get("marked_share")) and isinstance(c.get("count"), int) for c, _ in cells)
    overall = (sum(c["marked_share"] * c["count"] for c, _ in cells) / max(1, sum(c["count"] for c, _ in cells))
               if marked else None)
    layer = str(atlas.get("layer", "layer"))

    def draw(figure: Any) -> None:
        axes = figure.subplots(grid, grid, squeeze=False, gridspec_kw={"wspace": 0.05, "hspace": 0.3})
        for ax in axes.flat:
            ax.set_axis_off()
        for cell, image in cells:
            ax = axes[cell["row"], cell["col"]]
            ax.set_axis_on()
            ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            share = cell["marked_share"] if overall is not None else None
            above = share is not None and share > overall
            for spine in ax.spines.values():
                spine.set_visible(True)
                spine.set_color(FAIL_COLOR if above else NEUTRAL_COLOR)
                spine.set_linewidth(1.5 if above else 0.5)
            label = f"{short_label(cell.get('label', ''), 6)} " if cell.get("label") is not None else ""
            marks = f" {share:.0%}" if share is not None else ""
            ax.set_title(f"{label}n={cell.get('count')}{marks}", fontsize=5, fontweight="normal", pad=1.5)
        _title(figure, f"Activation atlas of {short_label(layer, TITLE_NAME_CHARS)}")

    counts = [c.get("count") for c, _ in cells if isinstance(c.get("count"), int)]
    caption = (f"The audit samples' activations at {layer} laid out in two dimensions ({atlas.get('method', '?')} of "
               f"{atlas.get('samples', '?')} samples) and cut into a {grid}x{grid} grid; each drawn cell (at least "
               f"{min(counts) if counts else '?'} samples) shows the mean input of the samples that fall in it, titled "
               "with their most common predicted class and their number. Neighbouring cells are samples the layer "
               "represents alike."
               + (f" The percentage is the share of the cell's samples that carry the region; cells framed in red "
                  f"carry it more often than the {overall:.0%} of all samples drawn." if overall is not None else ""))
    return Figure(f"{prefix}-atlas.svg", f"Activation atlas, {layer}", caption,
                  render_svg(prefix + "-atlas", draw, (6.4, 4.8)))


# -- token contexts ------------------------------------------------------------------------------------------------

def token_contexts_figure(entries: Any, prefix: str) -> Figure | None:
    """Exemplar token contexts, one line each, the activating token (``[[tok]]``) highlighted."""
    if not isinstance(entries, list):
        return None
    rows = [(str(e["component"]), [x for x in e["exemplars"][:MAX_CONTEXTS] if _context(x)])
            for e in entries[:MAX_HEADS] if isinstance(e, dict) and "component" in e
            and isinstance(e.get("exemplars"), list)]
    rows = [(name, items) for name, items in rows if items]
    if not rows:
        return None
    lines = sum(1 + len(items) for _, items in rows)

    def draw(figure: Any) -> None:
        ax = figure.subplots()
        ax.set_axis_off()
        ax.set_xlim(0, 1)
        ax.set_ylim(lines, 0)
        y = 0.5
        for name, items in rows:
            ax.text(0, y, short_label(name, 40), fontsize=8, fontweight="bold", va="center")
            y += 1
            for item in items:
                before, token, after = _context(item)
                activation = item.get("activation")
                ax.text(0.02, y, f"{activation:.3g}" if _number(activation) else "n/a", fontsize=7, va="center",
                        family="DejaVu Sans Mono")
                text = ax.text(0.12, y, before + " ", fontsize=7, va="center", family="DejaVu Sans Mono")
                mark = ax.annotate(token, xycoords=text, xy=(1, 0.5), va="center", fontsize=7,
                                   family="DejaVu Sans Mono", fontweight="bold",
                                   bbox={"boxstyle": "square,pad=0.15", "facecolor": "#ffd54f", "edgecolor": "none"})
                ax.annotate(" " + after, xycoords=mark, xy=(1, 0.5), va="center", fontsize=7,
                            family="DejaVu Sans Mono")
                y += 1
        _title(figure, "Contexts that activate each component the most")

    caption = ("For each component, the audit samples on which it activates the most (strongest first): its "
               f"activation, then the tokens around the position where it peaks, that token highlighted. {TOKEN_NOTE}")
    return Figure(f"{prefix}-contexts.svg", "Top-activating contexts", caption,
                  render_svg(prefix + "-contexts", draw, (6.4, 0.6 + 0.2 * lines)))


def _context(exemplar: Any) -> tuple[str, str, str] | None:
    text = exemplar.get("context") if isinstance(exemplar, dict) else None
    if not isinstance(text, str) or "[[" not in text or "]]" not in text:
        return None
    before, rest = text.split("[[", 1)
    token, after = rest.split("]]", 1)
    return before.strip(), token, after.strip()


# -- attribution per input column (tables) -------------------------------------------------------------------------

def classes_shown(value: dict) -> str:
    """" (N of M classes, the most often predicted)" when per-class evidence keeps only some classes, else ""."""
    total, shown = value.get("classes_total"), len(value.get("classes") or [])
    return (f" ({shown} of {total} classes, the most often predicted)"
            if isinstance(total, int) and not isinstance(total, bool) and total > shown else "")


def columns_figure(value: Any, prefix: str, region: str = "region") -> Figure | None:
    """Share of the attribution per input column, one group of bars per predicted class; the region's column red."""
    if not isinstance(value, dict):
        return None
    columns, classes, shares = value.get("columns"), value.get("classes"), value.get("mean_share_per_class")
    if not (isinstance(columns, list) and 0 < len(columns) <= MAX_COLUMNS and isinstance(classes, list)
            and 0 < len(classes) <= MAX_COLUMNS):
        return None
    matrix = _matrix(shares, MAX_COLUMNS)
    if matrix is None or matrix.shape != (len(classes), len(columns)):
        return None
    marked = value.get("region_column")
    panels = [(f"predicted {short_label(name, 12)}", [str(c) for c in columns], list(row))
              for name, row in zip(classes, matrix)]
    caption = (f"Mean share of each input column in the absolute attribution, per predicted class"
               f"{classes_shown(value)} (the {region} column in red, then the {len(columns) - 1} columns with most "
               "attribution); a model that ignores the protected column gives it a bar near zero.")
    return Figure(f"{prefix}-columns.svg", "Attribution per column", caption,
                  _column_bars(prefix + "-columns", panels, "Attribution per input column",
                               lambda i: i == marked, shared=True))


def unit_columns_figure(entries: Any, prefix: str) -> Figure | None:
    """Per unit of a tabular model (at most 3): the share of its attribution per input column, largest first."""
    if not isinstance(entries, list):
        return None
    panels = []
    for entry in entries[:MAX_HEADS]:
        if not isinstance(entry, dict) or "component" not in entry:
            continue
        columns, shares = entry.get("columns"), entry.get("shares")
        if (isinstance(columns, list) and isinstance(shares, list) and 0 < len(columns) == len(shares) <= MAX_COLUMNS
                and all(_number(v) and np.isfinite(v) for v in shares)):
            panels.append((short_label(str(entry["component"]), 24), [str(c) for c in columns],
                           [float(v) for v in shares]))
    if not panels:
        return None
    samples = {entry.get("samples") for entry in entries[:MAX_HEADS] if isinstance(entry, dict)}
    over = f" over {samples.pop()} audit samples" if len(samples) == 1 and isinstance(next(iter(samples)), int) \
        else ""
    leaders = "; ".join(f"{name}: {columns[0]} ({shares[0]:.0%})" for name, columns, shares in panels)
    caption = ("What each unit reads: the share of each input column in the unit's attribution (|gradient x (input "
               f"- mean input)| of its activation, averaged{over}), the columns with the largest shares, largest "
               f"first. Largest: {leaders}. A unit that reads one column is a single point through which that column "
               "reaches the output.")
    return Figure(f"{prefix}-unit-columns.svg", "Attribution per column of the units", caption,
                  _column_bars(prefix + "-unit-columns", panels, "Which input columns each unit reads",
                               lambda i: False, shared=False))


def _column_bars(name: str, panels: list[tuple[str, list[str], list[float]]], title: str, marked: Any,
                 shared: bool) -> str:
    """Horizontal bars side by side, one panel ``(title, columns, shares)`` each; bar ``i`` red where
    ``marked(i)``; with ``shared`` the panels share the first panel's column labels."""
    rows = max(len(columns) for _, columns, _ in panels)

    def draw(figure: Any) -> None:
        axes = figure.subplots(1, len(panels), sharey=shared, squeeze=False)[0]
        for ax, (heading, columns, shares) in zip(axes, panels):
            y = list(range(len(columns)))
            ax.barh(y, shares, color=[FAIL_COLOR if marked(i) else PASS_COLOR for i in y])
            ax.set_title(heading, fontsize=7, fontweight="normal")
            ax.set_xlabel("attribution share", fontsize=7)
            if not shared or ax is axes[0]:
                ax.set_yticks(y, [short_label(c, 20) for c in columns], **({} if shared else {"fontsize": 7}))
                ax.invert_yaxis()
        _title(figure, title)
    return render_svg(name, draw, (6.4, 1.0 + 0.2 * rows))


TOKENS_A_LINE = 16


def token_strip_lines(strips: list[tuple[str, list[str], list[float], list[bool]]]) -> int:
    """Text lines the strips take: a header and the tokens, ``TOKENS_A_LINE`` a line, per strip."""
    return sum(1 + -(-len(tokens) // TOKENS_A_LINE) for _, tokens, _, _ in strips)


def draw_token_strips(figure: Any, strips: list[tuple[str, list[str], list[float], list[bool]]], colormap: str,
                      lines: int) -> None:
    """Each strip ``(header, tokens, shades in [0, 1], dark)``: its header, then its tokens in order, each boxed in
    the colour map's ``shade`` (white text where ``dark``); the last token of a strip is framed in red."""
    import matplotlib

    colours = matplotlib.colormaps[colormap]
    ax = figure.subplots()
    ax.set_axis_off()
    ax.set_xlim(0, TOKENS_A_LINE)
    ax.set_ylim(lines, 0)
    y = 0.5
    for header, tokens, shades, dark in strips:
        ax.text(0, y, header, fontsize=7, fontweight="bold", va="center")
        y += 1
        for i, (token, shade, white) in enumerate(zip(tokens, shades, dark)):
            x = i % TOKENS_A_LINE
            ax.text(x + 0.5, y, short_label(token, 6), ha="center", va="center", fontsize=6,
                    family="DejaVu Sans Mono", color="white" if white else "black",
                    bbox={"boxstyle": "square,pad=0.25", "facecolor": colours(shade),
                          "edgecolor": FAIL_COLOR if i == len(tokens) - 1 else "#dddddd"})
            if x == TOKENS_A_LINE - 1 and i < len(tokens) - 1:
                y += 1
        y += 1
