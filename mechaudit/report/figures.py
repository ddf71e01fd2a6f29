"""Evidence figures: small, deterministic SVG charts drawn with matplotlib from a finding's evidence.

A figure is drawn only where the evidence's shape is known: :data:`DRAWERS` maps a check name to the function
that draws its findings, and :func:`circuit_figure` draws the ``circuit`` evidence hook (see
``docs/report-evidence.md``). The SVG keeps its text as text (no embedded fonts), carries no date, and takes its
element ids from a salt derived from the figure's name, so the same evidence gives the same bytes and two
figures inlined in one page never share an id.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

_RC = {
    "svg.fonttype": "none",
    "text.parse_math": False,  # '$' in a component or class name is text, not TeX
    "font.family": "DejaVu Sans",
    "font.size": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 9,
    "axes.titleweight": "bold",
}
PASS_COLOR, FAIL_COLOR, NEUTRAL_COLOR, LIMIT_COLOR = "#4c78a8", "#c62828", "#9e9e9e", "#333333"
MAX_BARS = 256  # above this, a histogram replaces one bar per unit
LABEL_CHARS = 28  # tick labels
TITLE_NAME_CHARS = 32  # a component's name inside a figure title


@dataclass(frozen=True)
class Figure:
    """One evidence figure: its file name under ``figures/``, a title, a caption and the SVG document."""

    name: str
    title: str
    caption: str
    svg: str
    #: The evidence keys drawn in full by this figure: the report's evidence tables leave them out.
    sources: tuple[str, ...] = ()

    @property
    def inline(self) -> str:
        """The ``<svg>`` element alone, ready to inline in HTML (no XML prolog, no DOCTYPE)."""
        return self.svg[self.svg.index("<svg"):]


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe rendering of a component or rule name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:limit] or "x"


def short_label(text: Any, limit: int = LABEL_CHARS) -> str:
    """``text`` cut in the middle to at most ``limit`` characters, keeping its end (a unit's ``:u12``)."""
    text = str(text)
    if len(text) <= limit:
        return text
    tail = min(8, limit // 3)
    return text[:limit - tail - 1] + "\u2026" + text[-tail:]


def render_svg(name: str, draw: Callable[[Any], None], size: tuple[float, float] = (6.4, 2.6)) -> str:
    """Draw on a fresh matplotlib figure (no pyplot, no global backend) and return deterministic SVG text."""
    import matplotlib
    from matplotlib.figure import Figure as MplFigure

    with matplotlib.rc_context({**_RC, "svg.hashsalt": name}):
        figure = MplFigure(figsize=size, layout="constrained")
        draw(figure)
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    return _tidy(buffer.getvalue())


def _tidy(svg: str) -> str:
    """Drop the RDF metadata block and the ``<g>`` ids (``figure_1``, ``axes_1``: the same in every figure)."""
    svg = re.sub(r"\s*<metadata>.*?</metadata>", "", svg, flags=re.DOTALL)
    return re.sub(r'<g id="[^"]*"', "<g", svg)


def _title(figure: Any, text: str) -> None:
    """A title centred on the whole figure (an axes title would shift right of long tick labels)."""
    figure.suptitle(text, fontsize=9, fontweight="bold")


def _limit_line(ax: Any, value: float, label: str) -> None:
    """A dashed vertical line at ``value`` across horizontal bars: the limit, or the no-reliance level."""
    ax.axvline(value, color=LIMIT_COLOR, linestyle="--", linewidth=1, label=label)


# -- one drawer per check: (finding as in findings.json, figure name prefix) -> figures ---------------------------

def dead_units_figures(finding: dict, prefix: str) -> list[Figure]:
    """D101: the share of samples on which each unit activates; dead units (never active) in red."""
    fractions = finding["evidence"].get("active_fraction_per_unit")
    if not _numbers(fractions):
        return []
    layer = finding["location"]["component"] if finding.get("location") else "layer"
    threshold = finding.get("threshold")

    def draw(figure: Any) -> None:
        ax = figure.subplots()
        if len(fractions) <= MAX_BARS:
            colors = [FAIL_COLOR if f <= 0 else PASS_COLOR for f in fractions]
            ax.bar(range(len(fractions)), [max(f, 0.004) for f in fractions], color=colors, width=0.8)
            ax.set_xlabel("unit index")
            ax.set_xlim(-0.8, len(fractions) - 0.2)
        else:
            ax.hist(fractions, bins=40, range=(0, 1), color=PASS_COLOR)
            ax.set_xlabel("share of samples on which a unit activates")
        ax.set_ylabel("active share" if len(fractions) <= MAX_BARS else "units")
        _title(figure, f"Activity of the units of {short_label(layer, TITLE_NAME_CHARS)}")

    dead = sum(1 for f in fractions if f <= 0)
    caption = (f"Share of audit samples on which each of the {len(fractions)} units activates; red bars are dead "
               f"units ({dead}, i.e. {dead / len(fractions):.0%}"
               + (f", limit {threshold:.0%})." if isinstance(threshold, (int, float)) else ")."))
    return [Figure(f"{prefix}-activity.svg", f"Unit activity, {layer}", caption, render_svg(prefix, draw))]


def forbidden_input_figures(finding: dict, prefix: str) -> list[Figure]:
    """L201: reliance per predicted class (the attribution-ratio finding) and the what-if edit (the flip-rate
    finding, when it carries one)."""
    return (_reliance_figures(finding, prefix) + _heatmap_figures(finding, prefix) + _columns_figures(finding, prefix)
            + _what_if_figures(finding, prefix) + _decomposition(finding, prefix))


def _columns_figures(finding: dict, prefix: str) -> list[Figure]:
    """L201 on tables: attribution share per input column and predicted class."""
    from .unit_figures import columns_figure

    region = finding["location"]["component"] if finding.get("location") else "region"
    figure = columns_figure(finding["evidence"].get("attribution_per_column"), prefix, region)
    return [replace(figure, sources=("attribution_per_column",))] if figure else []


def _heatmap_figures(finding: dict, prefix: str) -> list[Figure]:
    """L201 on images: where the model looks, as mean absolute attribution per predicted class and for a few
    samples, the declared region outlined."""
    from .unit_figures import classes_shown

    maps = finding["evidence"].get("attribution_maps")
    if not isinstance(maps, dict) or not isinstance(maps.get("mean_per_class"), list) or not maps["mean_per_class"]:
        return []
    panels = [(f"class {c}", m, "magma") for c, m in zip(maps["classes"], maps["mean_per_class"])]
    for i, sample in enumerate(maps.get("samples") or [], 1):
        if sample.get("input") is not None:
            panels.append((f"#{i} input ({sample['predicted_class']})", sample["input"], "gray"))
        panels.append((f"#{i} attribution", sample["map"], "magma"))
    outline = _outline(maps["mask"])
    region = finding["location"]["component"] if finding.get("location") else "region"
    columns = min(len(panels), 8)
    rows = -(-len(panels) // columns)

    def draw(figure: Any) -> None:
        axes = figure.subplots(rows, columns, squeeze=False)
        for ax in axes.flat:
            ax.set_axis_off()
        for ax, (title, image, colours) in zip(axes.flat, panels):
            ax.pcolormesh(image, cmap=colours, edgecolors="face", linewidth=0)  # vector: no raster
            ax.contour(*outline, levels=[0.5], colors="#00e5ff", linewidths=1.2)
            ax.set_aspect("equal")
            ax.invert_yaxis()
            ax.set_title(short_label(title, 22), fontsize=7, fontweight="normal")
        _title(figure, f"Where the model looks, {short_label(region, TITLE_NAME_CHARS)} outlined")

    caption = (f"Mean absolute attribution ({finding['evidence'].get('method', 'attribution')}, to the predicted "
               f"class) over the input, per predicted class{classes_shown(maps)}, then "
               f"{len(maps.get('samples') or [])} samples where "
               "the region is present"
               + (", each input (grey, titled with its predicted class) beside its attribution" if any(
                   s.get("input") is not None for s in maps.get("samples") or []) else "")
               + f"; brighter is more attribution; the cyan outline is {region}.")
    return [Figure(f"{prefix}-heatmaps.svg", "Attribution heatmaps", caption,
                   render_svg(prefix + "-heatmaps", draw, (6.4, 0.4 + 1.05 * rows)))]


def _what_if_figures(finding: dict, prefix: str) -> list[Figure]:
    """L201's what-if edit: flip rate and accuracy without the region, before and after erasing the region's
    direction at each hidden layer (held-out samples)."""
    edit = finding["evidence"].get("what_if")
    if not isinstance(edit, dict) or not _rows(edit.get("layers"), ("layer", "after")) or not edit["layers"]:
        return []
    before = edit.get("before") or {}
    metrics = [(key, text) for key, text in (("flip_rate", "predictions flipped without region"),
                                             ("accuracy_region_removed", "accuracy without region"))
               if _number(before.get(key))]
    if not metrics:
        return []
    labels = ["before"] + [short_label(row["layer"], 16) + (" *" if row["layer"] == edit.get("best") else "")
                           for row in edit["layers"]]

    def draw(figure: Any) -> None:
        axes = figure.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
        for ax, (key, text) in zip(axes, metrics):
            values = [before[key]] + [row["after"].get(key) or 0 for row in edit["layers"]]
            colors = [NEUTRAL_COLOR] + [FAIL_COLOR if key == "flip_rate" else PASS_COLOR] * len(edit["layers"])
            y = range(len(values))
            ax.barh(y, values, color=colors)
            for i, value in enumerate(values):
                ax.annotate(f"{value:.1%}", (value, i), xytext=(3, 0), textcoords="offset points", va="center",
                            fontsize=7)
            ax.set_yticks(list(y), labels)
            ax.set_xlim(0, 1.15)
            ax.set_xlabel(text)
        axes[0].invert_yaxis()
        _title(figure, "What if the region's direction were erased at one layer")

    caption = (f"Before: the model as it is; each other bar: its direction erased at that layer (a simulation, "
               f"not a retrained model), measured on {edit.get('evaluated_samples')} held-out samples; * marks the "
               f"recommended layer (lowest flip rate whose accuracy cost is at most "
               f"{edit.get('max_accuracy_cost', 0):.0%}).")
    return [Figure(f"{prefix}-what-if.svg", "What-if edit", caption,
                   render_svg(prefix + "-what-if", draw, (6.4, 1.1 + 0.25 * len(labels))))]


def _outline(mask: list) -> tuple:
    """The mask padded with zeros on cell centres (x, y, z) for ``contour``: a region at the border closes."""
    import numpy as np

    padded = np.pad(np.asarray(mask, dtype=float), 1)
    rows, columns = padded.shape
    return np.arange(columns) - 0.5, np.arange(rows) - 0.5, padded


def _reliance_figures(finding: dict, prefix: str) -> list[Figure]:
    evidence = finding["evidence"]
    rows, area = evidence.get("per_class"), evidence.get("mask_area_share")
    if not _rows(rows, ("predicted_class", "attribution_share_in_mask", "flip_rate")) or not _number(area):
        return []
    region = finding["location"]["component"] if finding.get("location") else "region"

    def draw(figure: Any) -> None:
        left, right = figure.subplots(1, 2, sharey=True)
        labels = [short_label(r["predicted_class"], 14) for r in rows]
        y = range(len(rows))
        left.barh(y, [r["attribution_share_in_mask"] or 0 for r in rows], color=PASS_COLOR)
        _limit_line(left, area, "region's share of the input")
        left.set_yticks(list(y), labels)
        left.invert_yaxis()
        left.set_xlabel("attribution share in region")
        left.set_ylabel("predicted class")
        left.legend(loc="lower right", frameon=False)
        right.barh(y, [r["flip_rate"] or 0 for r in rows], color=FAIL_COLOR)
        right.set_xlabel("predictions flipped without region")
        right.set_xlim(0, 1)
        _title(figure, f"Reliance on {short_label(region, TITLE_NAME_CHARS)} by predicted class")

    caption = (f"Left: share of the absolute attribution that falls inside {region}, per predicted class; the "
               f"dashed line is the region's share of the input ({area:.1%}), what a model that ignores it would "
               "show. Right: share of each class's predictions that change when the region is replaced by the "
               "baseline.")
    height = 1.2 + 0.22 * len(rows)
    return [Figure(f"{prefix}-per-class.svg", f"Reliance on {region} by class", caption,
                   render_svg(prefix, draw, (6.4, height)))]


def critical_units_figures(finding: dict, prefix: str) -> list[Figure]:
    """L202: accuracy drop per ablated unit (top units of a layer) or per ablation mode (one critical unit)."""
    evidence, threshold = finding["evidence"], finding.get("threshold")
    rows = evidence.get("top_units")
    modes = sorted(k for k in evidence if k.endswith("_drop") and _number(evidence[k]))
    where = finding["location"]["component"] if finding.get("location") else "model"
    if _rows(rows, ("unit",)) and rows:
        labels = [short_label(r["unit"]) for r in rows]
        columns = [k for k in rows[0] if k.endswith("_drop")]
        series = {k.removesuffix("_drop"): [r.get(k) or 0 for r in rows] for k in columns}
        title, caption = (f"Accuracy drop per ablated unit of {short_label(where, TITLE_NAME_CHARS)}",
                          (f"The {len(rows)} units of {where} whose ablation costs the most accuracy, by ablation "
                           "mode; the dashed line is the rule's limit."))
    elif modes:
        labels = [k.removesuffix("_drop") + " ablation" for k in modes]
        series = {"drop": [evidence[k] for k in modes]}
        title, caption = (f"Accuracy drop when ablating {short_label(where, TITLE_NAME_CHARS)}",
                          (f"Accuracy lost when {where} alone is ablated, by ablation mode; the dashed line is the "
                           "rule's limit."))
    else:
        return []

    def draw(figure: Any) -> None:
        ax = figure.subplots()
        height = 0.8 / len(series)
        for i, (mode, values) in enumerate(series.items()):
            ax.barh([y + i * height for y in range(len(labels))], values, height=height, label=mode,
                    color=(PASS_COLOR, NEUTRAL_COLOR, FAIL_COLOR)[i % 3])
        if _number(threshold):
            _limit_line(ax, threshold, "limit")
        ax.set_yticks([y + (len(series) - 1) * height / 2 for y in range(len(labels))], labels)
        ax.invert_yaxis()
        ax.set_xlabel("accuracy drop")
        ax.legend(loc="lower right", frameon=False)
        _title(figure, title)

    size = (6.4, 1.0 + 0.22 * len(labels) * max(1, len(series) * 0.6))
    return [Figure(f"{prefix}-ablation.svg", title, caption, render_svg(prefix, draw, size)),
            *_decomposition(finding, prefix)]


def representation_drift_figures(finding: dict, prefix: str) -> list[Figure]:
    """D107: linear CKA and RSA with the baseline, layer by layer (drawn on the first layer's finding)."""
    rows, threshold = finding["evidence"].get("by_layer"), finding.get("threshold")
    if not _rows(rows, ("layer", "cka", "rsa")) or not _number(threshold):
        return []

    def draw(figure: Any) -> None:
        ax = figure.subplots()
        y = range(len(rows))
        ax.barh([i - 0.2 for i in y], [r["cka"] for r in rows], height=0.4, label="linear CKA",
                color=[FAIL_COLOR if r["cka"] < 1 - threshold else PASS_COLOR for r in rows])
        ax.barh([i + 0.2 for i in y], [r["rsa"] for r in rows], height=0.4, label="RSA (Spearman)", color=NEUTRAL_COLOR)
        _limit_line(ax, 1 - threshold, f"CKA limit {1 - threshold:.2f}")
        ax.set_yticks(list(y), [short_label(r["layer"]) for r in rows])
        ax.invert_yaxis()
        ax.set_xlim(min(0.0, *(r["rsa"] for r in rows)), 1.0)
        ax.set_xlabel("similarity with the baseline's layer")
        ax.legend(loc="lower left", frameon=False)
        _title(figure, "Representation drift since the baseline, layer by layer")

    changed = [r["layer"] for r in rows if r["cka"] < 1 - threshold]
    caption = ("Linear CKA (coloured; red below the limit) and RSA (grey) between each layer's representation of "
               "the fingerprinted samples and its baseline counterpart's; 1 is the same representation up to "
               "rotation and scale. " + (f"Changed: {', '.join(changed)}." if changed else "No layer changed."))
    return [Figure(f"{prefix}-drift.svg", "Representation drift by layer", caption,
                   render_svg(prefix, draw, (6.4, 1.2 + 0.3 * len(rows))))]


def weakness_attack_figures(finding: dict, prefix: str) -> list[Figure]:
    """R305: flip rate against epsilon for the region attack, the whole-input attack and noise in the region."""
    evidence, threshold = finding["evidence"], finding.get("threshold")
    epsilons, rates = evidence.get("epsilons"), evidence.get("flip_rates")
    kinds = {"region": ("PGD in the region", FAIL_COLOR), "whole_input": ("PGD on the whole input", NEUTRAL_COLOR),
             "noise": ("noise in the region", PASS_COLOR)}
    if isinstance(rates, dict) and "component" in rates:  # R305 on units: PGD driving them; noise on the whole input
        kinds = {"component": ("PGD driving the unit(s)", FAIL_COLOR), "whole_input": kinds["whole_input"],
                 "noise": ("noise on the whole input", PASS_COLOR)}
    if not _numbers(epsilons) or not isinstance(rates, dict) or not all(
            _numbers(rates.get(k)) and len(rates[k]) == len(epsilons) for k in kinds):
        return []
    region = finding["location"]["component"] if finding.get("location") else "region"

    def draw(figure: Any) -> None:
        ax = figure.subplots()
        for kind, (label, color) in kinds.items():
            ax.plot(epsilons, rates[kind], marker="o", color=color, label=label)
        if _number(threshold):
            ax.axhline(threshold, color=LIMIT_COLOR, linestyle="--", linewidth=1, label="limit")
        if _number(evidence.get("judged_epsilon")):
            ax.axvline(evidence["judged_epsilon"], color=LIMIT_COLOR, linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("epsilon (share of the input range, L-infinity)")
        ax.set_ylabel("predictions flipped")
        ax.legend(loc="upper left", frameon=False)
        _title(figure, f"Attacks through {short_label(region, TITLE_NAME_CHARS)}")

    caption = (f"Share of predictions changed by projected gradient descent confined to {region} (red), by the "
               "same attack over the whole input (grey) and by random noise of the same size in the region "
               "(blue), per budget epsilon; the dashed line is the limit, the dotted one the judged budget.")
    if "component" in kinds:
        region = ", ".join(map(str, evidence.get("units") or [region]))
        caption = (f"Share of predictions changed by projected gradient descent that drives {region} towards and "
                   "past its mean (red), by PGD on the model's output over the whole input (grey) and by random "
                   "noise of the same size (blue), per budget epsilon; dashed: the limit, dotted: the judged budget.")
    return [Figure(f"{prefix}-attacks.svg", f"Attacks through {region}", caption, render_svg(prefix, draw))]


def _decomposition(finding: dict, prefix: str) -> list[Figure]:
    """D102-D104: exemplars, activation maximisation and layer maps (see :mod:`.decomposition_figures`)."""
    from .decomposition_figures import decomposition_figures

    return decomposition_figures(finding, prefix)


def patching_figures(finding: dict, prefix: str) -> list[Figure]:
    """L207: attention patterns of carrier heads (:mod:`.decomposition_figures`) and, on token-id models, the
    per-token attribution (:mod:`.token_figures`)."""
    from .token_figures import token_attribution_figures

    return _decomposition(finding, prefix) + token_attribution_figures(finding, prefix)


DRAWERS: dict[str, Callable[[dict, str], list[Figure]]] = {
    "dead_units": dead_units_figures,
    "forbidden_input": forbidden_input_figures,
    "critical_units": critical_units_figures,
    "representation_drift": representation_drift_figures,
    "weakness_attack": weakness_attack_figures,
    "patching": patching_figures,
    "polysemantic_units": _decomposition,
    "dictionary_features": _decomposition,
    "dimensionality": _decomposition,
}


def circuit_figure(circuit: dict, layer_order: Sequence[str], prefix: str) -> Figure | None:
    """The ``circuit`` evidence hook as a layered graph: one column per layer, edges weighted by |weight|."""
    nodes, edges = circuit.get("nodes"), circuit.get("edges", [])
    if not _rows(nodes, ("id",)) or not nodes or not _rows(edges, ("source", "target")):
        return None
    columns = _columns(nodes, layer_order)
    position: dict[str, tuple[float, float]] = {}
    for column, members in enumerate(columns):
        for row, node in enumerate(members):
            position[str(node["id"])] = (column, -(row - (len(members) - 1) / 2))
    heaviest = max((abs(_weight(e)) for e in edges), default=0) or 1.0
    named = circuit.get("behaviour")
    behaviour = short_label(named if isinstance(named, str) and named else "output", 18)

    def draw(figure: Any) -> None:
        ax = figure.subplots()
        for edge in edges:
            start, end = position.get(str(edge["source"])), position.get(str(edge["target"]))
            if start and end:
                weight = _weight(edge)
                ax.plot([start[0], end[0]], [start[1], end[1]], color=PASS_COLOR if weight >= 0 else FAIL_COLOR,
                        linewidth=0.5 + 3 * abs(weight) / heaviest, alpha=0.7, zorder=1)
        ends = ((-1, "inputs", columns[0]), (len(columns), behaviour, columns[-1]))
        for x_end, text, members in ends:  # where the circuit reads from and what it computes
            for node in members:
                x, y = position[str(node["id"])]
                ax.plot([x_end, x], [0, y], color=NEUTRAL_COLOR, linestyle=":", linewidth=0.8, zorder=0)
            ax.annotate(text, (x_end, 0), ha="center", va="center", fontsize=7,
                        bbox={"boxstyle": "round", "facecolor": "#f0f1f4", "edgecolor": NEUTRAL_COLOR})
        for node in nodes:
            x, y = position[str(node["id"])]
            ax.scatter([x], [y], s=160, color="white", edgecolors=LIMIT_COLOR, zorder=2)
            text = short_label(node["id"], 22) + (f"\n{short_label(node['label'], 22)}" if node.get("label") else "")
            ax.annotate(text, (x, y), xytext=(0, -13),
                        textcoords="offset points", ha="center", va="top", fontsize=7)
        ax.set_xticks(range(len(columns)), [short_label(_layer_of(m[0]), 18) for m in columns])
        ax.set_xlim(-1.6, len(columns) + 0.6)
        ax.set_yticks([])
        ax.spines["left"].set_visible(False)
        ax.margins(y=0.3)

    tallest = max(len(m) for m in columns)
    return Figure(f"{prefix}-circuit.svg", "Circuit",
                  "Read left to right: the inputs, the components one column per layer in forward order, and the "
                  "behaviour the circuit computes (dotted lines join them to the first and last layer). Edge width "
                  f"is proportional to the magnitude of the edge's score (the widest: {heaviest:.3g}), blue positive, "
                  "red negative."
                  + (f" {circuit['left_out_edges']} weaker edges are left out." if circuit.get("left_out_edges")
                     else ""),
                  render_svg(prefix, draw, (6.4, 1.2 + 0.55 * tallest)))


def _weight(edge: dict) -> float:
    value = edge.get("score", edge.get("weight"))
    return float(value) if _number(value) else 0.0


def _layer_of(node: dict) -> str:
    return str(node.get("layer") or str(node["id"]).split(":")[0])


def _columns(nodes: list[dict], layer_order: Sequence[str]) -> list[list[dict]]:
    """Nodes grouped by layer, ordered by ``depth`` when every node has one, else inputs first, then the model's
    layers in forward order, then anything else."""
    rank = {layer: i for i, layer in enumerate(layer_order)}
    groups: dict[str, list[dict]] = {}
    for node in nodes:
        groups.setdefault(_layer_of(node), []).append(node)
    by_depth = all(_number(n.get("depth")) for n in nodes)

    def order(layer: str) -> tuple[float, int]:
        if by_depth:
            return (groups[layer][0]["depth"], 0)
        if layer.startswith("input"):
            return (0, 0)
        return (1, rank[layer]) if layer in rank else (2, list(groups).index(layer))
    return [groups[layer] for layer in sorted(groups, key=order)]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _numbers(values: Any) -> bool:
    return isinstance(values, list) and bool(values) and all(_number(v) for v in values)


def _rows(rows: Any, keys: tuple[str, ...]) -> bool:
    return isinstance(rows, list) and all(isinstance(r, dict) and all(k in r for k in keys) for r in rows)
