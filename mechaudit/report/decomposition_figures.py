"""Figures for decomposition evidence (units and dictionary features): exemplars, activation maximisation,
tuning curves and layer maps, drawn from a finding's ``evidence`` with the helpers of :mod:`.figures`.

Each evidence key is validated before drawing; a key whose value has the wrong shape gives no figure rather than
an error. What is shown follows Zeiler & Fergus 2014 and Olah et al. 2017 (exemplars, feature visualisation),
Olah et al. 2020 (tuning curves) and Carter et al. 2019 (maps of a layer's activations).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from .figures import (
    FAIL_COLOR,
    PASS_COLOR,
    TITLE_NAME_CHARS,
    Figure,
    _number,
    _numbers,
    _title,
    render_svg,
    short_label,
)
from .unit_figures import (
    atlas_figure,
    attention_figure,
    token_attention_figure,
    token_contexts_figure,
    unit_columns_figure,
)

MAX_COMPONENTS, MAX_EXEMPLARS, MAX_CURVES, MAX_IMAGE_SIDE, MAX_LEGEND = 6, 8, 6, 256, 12
_DRAWN = (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError)


def decomposition_figures(finding: dict, prefix: str) -> list[Figure]:
    """One figure per decomposition evidence key present and well formed in ``finding["evidence"]``."""
    evidence = finding.get("evidence") if isinstance(finding, dict) else None
    if not isinstance(evidence, dict):
        return []
    figures = []
    for key, drawer in _KEYS.items():
        if key in evidence:
            try:
                drawn = drawer(evidence[key], prefix)
            except _DRAWN:  # malformed evidence that slipped through validation: no figure, never an error
                drawn = None
            figures += [replace(f, sources=(key,)) for f in (drawn if isinstance(drawn, list) else [drawn]) if f]
    return figures


# -- exemplars ------------------------------------------------------------------------------------------------------

def exemplars_figure(entries: Any, prefix: str) -> Figure | None:
    """A grid of image tiles: one row per component (at most 6), its top exemplars (at most 8) left to right."""
    if not isinstance(entries, list):
        return None
    rows = [(str(e["component"]), tiles) for e in entries[:MAX_COMPONENTS]
            if isinstance(e, dict) and "component" in e and (tiles := _tiles(e.get("exemplars")))]
    if not rows:
        return None
    columns = max(len(tiles) for _, tiles in rows)

    def draw(figure: Any) -> None:
        from matplotlib.patches import Rectangle

        axes = figure.subplots(len(rows), columns, squeeze=False)
        for r, (component, tiles) in enumerate(rows):
            for c in range(columns):
                ax = axes[r, c]
                ax.set_xticks([])
                ax.set_yticks([])
                if c >= len(tiles):
                    ax.set_axis_off()
                    continue
                image, activation, label, box = tiles[c]
                ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                if box is not None:  # the input region that can change the unit where it peaks
                    ax.add_patch(Rectangle((box[1] - 0.5, box[0] - 0.5), box[3] - box[1], box[2] - box[0],
                                           fill=False, edgecolor=FAIL_COLOR, linewidth=1.2))
                ax.set_title(_value(activation) + (f"\n{short_label(label, 12)}" if label is not None else ""),
                             fontsize=6, fontweight="normal")
                if c == 0:
                    ax.set_ylabel(short_label(component, 16), fontsize=7)
        _title(figure, "Top-activating samples per component")

    best = "; ".join(f"{short_label(name, TITLE_NAME_CHARS)} {_value(tiles[0][1])}" for name, tiles in rows)
    boxed = any(tile[3] is not None for _, tiles in rows for tile in tiles)
    caption = (f"The {columns} audit samples that activate each of {len(rows)} components the most (one row per "
               "component, strongest first). Each tile is the sample's mean over channels scaled to [0, 1]; its "
               "title gives the activation (the component's largest over positions) and the sample's label"
               + ("; the red box is the component's receptive field where it peaks (the input pixels whose gradient "
                  "reaches it)" if boxed else "") + f". Highest activations: {best}.")
    size = (min(1.0 * columns + 0.8, 9.0), 0.6 + 1.05 * len(rows))
    return _figure(prefix, "exemplars", "Top-activating exemplars", caption, draw, size)


def _tiles(exemplars: Any) -> list[tuple[np.ndarray, float | None, str | None, list[float] | None]]:
    """``(image, activation, label, receptive field box)`` of the exemplars with a valid ``tile``; empty if any
    lacks one."""
    if not isinstance(exemplars, list) or not exemplars:
        return []
    tiles = []
    for exemplar in exemplars[:MAX_EXEMPLARS]:
        activation = exemplar.get("activation") if isinstance(exemplar, dict) else False
        if not (_number(activation) or activation is None):  # None: a non-finite activation
            return []
        image = _image(exemplar.get("tile"))
        if image is None:
            return []
        label, box = exemplar.get("label"), exemplar.get("receptive_field")
        box = [float(v) for v in box] if _numbers(box) and len(box) == 4 else None
        tiles.append((image, None if activation is None else float(activation), None if label is None else str(label),
                      box))
    return tiles


# -- activation maximisation ----------------------------------------------------------------------------------------

def activation_max_figure(entries: Any, prefix: str) -> Figure | None:
    """A row of optimised inputs, one per component, titled with the objective reached."""
    if not isinstance(entries, list):
        return None
    items = [(str(e["component"]), image, float(e["objective"])) for e in entries[:MAX_EXEMPLARS]
             if isinstance(e, dict) and "component" in e and _number(e.get("objective"))
             and (image := _image(e.get("image"))) is not None]
    if not items:
        return None

    def draw(figure: Any) -> None:
        axes = figure.subplots(1, len(items), squeeze=False)[0]
        for ax, (component, image, objective) in zip(axes, items):
            ax.imshow(image, cmap="gray", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{short_label(component, 16)}\nobjective {objective:.3g}", fontsize=7, fontweight="normal")
        _title(figure, "Inputs optimised to activate each component")

    reached = "; ".join(f"{short_label(c, TITLE_NAME_CHARS)} {o:.3g}" for c, _, o in items)
    starts = [e.get("objective_start") for e in entries[:MAX_EXEMPLARS] if isinstance(e, dict)]
    start_text = (f", from {min(starts):.3g} to {max(starts):.3g} at the grey start"
                  if _numbers(starts) and len(starts) == len(items) else "")
    caption = (f"For each of {len(items)} components, an input optimised by gradient ascent (with jitter, blur and "
               "clamping to the data range) to maximise its activation, shown as the mean over channels, each "
               f"scaled to its own range. Objective reached: {reached}{start_text}.")
    size = (6.4, 1.9) if len(items) <= 4 else (min(1.3 * len(items) + 0.6, 9.0), 2.0)
    return _figure(prefix, "activation-max", "Activation maximisation", caption, draw, size)


# -- tuning curves --------------------------------------------------------------------------------------------------

def tuning_figure(entries: Any, prefix: str) -> Figure | None:
    """One panel per curve: a heatmap over patch positions, else the response against the swept factor."""
    if not isinstance(entries, list):
        return None
    curves = [curve for e in entries[:MAX_CURVES] if (curve := _curve(e)) is not None]
    if not curves:
        return None

    def draw(figure: Any) -> None:
        axes = figure.subplots(1, len(curves), squeeze=False)[0]
        for ax, (component, kind, xs, ys, grid) in zip(axes, curves):
            if kind == "heatmap":
                shown = ax.imshow(grid, cmap="viridis", interpolation="nearest")
                figure.colorbar(shown, ax=ax, shrink=0.8)
                ax.set_xlabel("patch column")
                ax.set_ylabel("patch row")
            else:
                ax.plot(xs, ys, color=PASS_COLOR, marker="o", markersize=2.5, linewidth=1.2)
                best = int(np.argmax(ys))
                ax.plot([xs[best]], [ys[best]], color=FAIL_COLOR, marker="o", markersize=4, linestyle="none")
                ax.set_xlabel(short_label(kind, 24))
                ax.set_ylabel("response")
            ax.set_title(short_label(component, 20), fontsize=7, fontweight="normal")
        _title(figure, "Tuning curves")

    caption = "Response of each component as one factor of its input is swept, the rest held fixed: " + "; ".join(
        _describe(c) for c in curves) + "."
    size = (min(2.4 * len(curves) + 0.6, 9.6), 2.4)
    return _figure(prefix, "tuning", "Tuning curves", caption, draw, size)


def _curve(entry: Any) -> tuple | None:
    """``(component, kind, xs, ys, grid)``: kind ``heatmap`` (patch position) or the factor's axis label."""
    if not isinstance(entry, dict) or "component" not in entry or not _numbers(entry.get("response")):
        return None
    component, ys = str(entry["component"]), [float(v) for v in entry["response"]]
    if _finite(ys) is None:
        return None
    positions = entry.get("positions")
    if isinstance(positions, list) and len(positions) == len(ys):
        if not all(isinstance(p, list) and len(p) == 2 and all(isinstance(v, int) and v >= 0 for v in p)
                   for p in positions):
            return None
        rows, columns = sorted({p[0] for p in positions}), sorted({p[1] for p in positions})
        if len(rows) > MAX_IMAGE_SIDE or len(columns) > MAX_IMAGE_SIDE:
            return None
        grid = np.full((len(rows), len(columns)), np.nan)
        for (r, c), y in zip(positions, ys):
            grid[rows.index(r), columns.index(c)] = y
        return component, "heatmap", [], ys, grid
    for key, label in (("angles", "orientation (degrees)"), ("values", None)):
        xs = entry.get(key)
        if _numbers(xs) and len(xs) == len(ys) and _finite(xs) is not None:
            return component, label or str(entry.get("factor", "value")), [float(v) for v in xs], ys, None
    return None


def _describe(curve: tuple) -> str:
    component, kind, xs, ys, grid = curve
    name = short_label(component, TITLE_NAME_CHARS)
    if kind == "heatmap":
        r, c = np.unravel_index(int(np.nanargmax(grid)), grid.shape)
        return (f"{name} over {grid.size} patch positions (heatmap), peak {max(ys):.3g} at row {r}, column {c}, "
                f"lowest {min(ys):.3g}")
    best = int(np.argmax(ys))
    return f"{name} against {kind}, peak {ys[best]:.3g} at {xs[best]:.3g}, lowest {min(ys):.3g}"


# -- layer map ------------------------------------------------------------------------------------------------------

def layer_map_figure(evidence: Any, prefix: str) -> Figure | None:
    """PCA and t-SNE maps of a layer's activations side by side, coloured by label."""
    if not isinstance(evidence, dict):
        return None
    maps = [(f"PCA ({_explained(evidence)})", points) for points in [_points(evidence.get("pca"))]
            if points is not None]
    if not maps:
        return None
    tsne = _points(evidence.get("tsne"))
    if tsne is not None and len(tsne) == len(maps[0][1]):
        maps.append(("t-SNE", tsne))
    labels = evidence.get("labels")
    if not (isinstance(labels, list) and len(labels) == len(maps[0][1])):
        labels = None
    classes = sorted({str(v) for v in labels}) if labels is not None else []
    layer = str(evidence.get("layer", "layer"))

    def draw(figure: Any) -> None:
        import matplotlib

        palette = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
        axes = figure.subplots(1, len(maps), squeeze=False)[0]
        for ax, (title, points) in zip(axes, maps):
            if labels is None:
                ax.scatter(points[:, 0], points[:, 1], s=6, color=PASS_COLOR, alpha=0.7, linewidths=0)
            for i, name in enumerate(classes):
                mask = np.array([str(v) == name for v in labels])
                ax.scatter(points[mask, 0], points[mask, 1], s=6, color=palette(i % palette.N), alpha=0.8,
                           linewidths=0, label=short_label(name, 14))
            ax.set_title(title, fontsize=8, fontweight="normal")
            ax.set_xticks([])
            ax.set_yticks([])
        if 0 < len(classes) <= MAX_LEGEND:
            axes[-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, markerscale=2,
                            fontsize=7)
        _title(figure, f"Map of {short_label(layer, TITLE_NAME_CHARS)}'s activations")

    separation = evidence.get("separation")
    caption = (f"Each point is one of {len(maps[0][1])} audit samples, placed by {layer}'s activation vector: "
               "left, its first two principal components"
               + (f" ({_explained(evidence)} of the variance)" if _explained(evidence) != "?" else "")
               + ("; right, a t-SNE embedding" if len(maps) == 2 else "")
               + (f". Colours are the {len(classes)} labels" if classes else ". No labels were given")
               + (f"; their silhouette in the PCA map is {separation:.2f} (1: separate clusters, 0: mixed)."
                  if _number(separation) else "."))
    return _figure(prefix, "layer-map", f"Layer map, {layer}", caption, draw, (6.4, 3.0))


def _explained(evidence: dict) -> str:
    ratios = evidence.get("pca_explained")
    if not _numbers(ratios) or _finite(ratios) is None:
        return "?"
    return f"{sum(ratios[:2]):.0%}"


def _points(value: Any) -> np.ndarray | None:
    """An ``(n, 2)`` finite array from a list of ``[x, y]`` pairs, or ``None``."""
    if not isinstance(value, list) or not value:
        return None
    if not all(isinstance(p, list) and len(p) == 2 and all(_number(v) for v in p) for p in value):
        return None
    return _finite(value)


# -- shared ---------------------------------------------------------------------------------------------------------

def _image(value: Any) -> np.ndarray | None:
    """A finite 2-D array from a rectangular list of lists of numbers (at most 256 a side), or ``None``."""
    if not isinstance(value, list) or not value or len(value) > MAX_IMAGE_SIDE:
        return None
    width = len(value[0]) if isinstance(value[0], list) else 0
    if not 0 < width <= MAX_IMAGE_SIDE:
        return None
    if not all(isinstance(row, list) and len(row) == width and all(_number(v) for v in row) for row in value):
        return None
    return _finite(value)


def _value(number: float | None) -> str:
    return "n/a" if number is None else f"{number:.3g}"


def _finite(value: Any) -> np.ndarray | None:
    array = np.asarray(value, dtype=float)
    return array if np.isfinite(array).all() else None


def _figure(prefix: str, kind: str, title: str, caption: str, draw: Callable[[Any], None],
            size: tuple[float, float]) -> Figure:
    name = f"{prefix}-{kind}"
    return Figure(f"{name}.svg", title, caption, render_svg(name, draw, size))


def _exemplars(entries: Any, prefix: str) -> Figure | None:
    """Image tiles, else token contexts."""
    return exemplars_figure(entries, prefix) or token_contexts_figure(entries, prefix)


_KEYS: dict[str, Callable[[Any, str], Figure | list[Figure | None] | None]] = {
    "exemplars": _exemplars,
    "activation_maximization": activation_max_figure,
    "tuning_curves": tuning_figure,
    "layer_map": layer_map_figure,
    "attention_patterns": lambda entries, prefix: [attention_figure(entries, prefix),
                                                   token_attention_figure(entries, prefix)],
    "activation_atlas": atlas_figure,
    "column_attribution": unit_columns_figure,
}
