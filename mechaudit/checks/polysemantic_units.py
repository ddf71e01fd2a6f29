"""D102: polysemantic units, read from the labels of each unit's top-activating samples."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypedDict

import numpy as np
import torch

from ..context import AuditContext
from ..cost import Cost, RuleCost, Sizes, forwards, stats_pass, unit_products
from ..findings import Location, Measurement
from ..techniques.selectivity import label_information, label_selectivity
from ..techniques.uncertainty import Interval, bootstrap
from .decomposition_common import CLASSES, pooled_activations, reading_labels
from .decomposition_evidence import exemplars
from .registry import RuleDefinition, RuleDocs, param, register

DOCS = RuleDocs(
    summary="A layer is mostly polysemantic: its units' strongest activations spread over several classes.",
    what="""
For every hidden layer, each unit's strong activations (per sample, the unit's maximum over positions, at least
`strong` of its maximum over the audit samples; at most `top` of them) are read against the labels (`labels`:
the classes, or a declared concept). The labels of those samples, re-weighted by the inverse of each label's
frequency, form a distribution whose perplexity is the unit's *effective number of labels*. A unit above
`max_effective_labels` is polysemantic; the finding fails (a warning) when more than `max_polysemantic_share` of
the layer's scored units are. Units strongly active on fewer than `min_active` samples are not scored.

Polysemantic *over the labels* is judged only where the units represent the labels at all: a layer is
label-coded when its *label information* (one minus the scored units' mean log effective number of labels over
the same with the labels shuffled, `chance_draws` seeded permutations: 0 at chance, 1 when every unit reads one
label) is at least `min_label_information` and above every shuffled draw's. Elsewhere (early edge or texture
detectors, whose strongest activations come from every class about equally) the finding describes the layer and
is not judged.
""",
    why="""
A polysemantic unit responds to unrelated inputs, so reading the model neuron by neuron misleads: a label put on
such a unit (by dissection, by a circuit node) describes only part of what it does. A mostly polysemantic layer
is the usual sign of superposition (more features than units), and the reason to read the layer's dictionary
features (D103) instead of its neurons.
""",
    how="""
Selectivity over top-activating samples, as in Olah et al. (2020) and the polysemanticity of Elhage et al.
(2022). Threshold from measurement on the toy model of superposition (20 features, 5 ReLU units, importance
0.9^i; audit data with one feature present per sample, the label being that feature): with sparse features
(sparsity 0.99) four of five units spread over 2.8 to 3.9 effective labels; with dense features (the control)
every unit stays at or below 2.0. `max_effective_labels = 2.5` separates them. On `digits` every conv channel
spreads over 8.7 to 9.8 of the 10 classes and every scored unit of `classifier.0` over 2.8 to 8.6 (the same in
`digits-control`). Label information (`tests/test_decomposition.py`, digits measured with
`mechaudit audit --example digits --select D102`): the conv layers of `digits` and `digits-control` 0.028 to
0.032 (shuffled labels: -0.001 to 0.003; their channels detect strokes, not digits), `classifier.0` 0.24 and
0.30, the superposition toy's hidden layer 0.65 (sparse) and 0.81 (dense); units planted to answer four
of ten classes each 0.40, units that answer none 0.002. `min_label_information = 0.1` lies
between them: the conv layers are described, not judged (they were all called polysemantic before), and
`classifier.0` is judged (it is polysemantic: the rule warns). Reference range of a label-coded layer: 0.2 and
above; of a layer that does not represent the labels: below 0.05.
""",
    fix="""
Not a defect to fix in the model: read the layer through its dictionary features (D103) and label those. If
monosemantic units are a requirement, train with more units per feature (a wider layer) or a sparsity penalty
on activations.
""",
    references=(
        "Olah, Cammarata, Schubert, Goh, Petrov, Carter (2020). Zoom In: An Introduction to Circuits. Distill.",
        "Elhage et al. (2022). Toy Models of Superposition. Transformer Circuits Thread.",
    ),
)
RULE = RuleDefinition("D102", "polysemantic-units", "warning", DOCS, opt_in=True)


@dataclass(frozen=True)
class PolysemanticParams:
    max_effective_labels: float = param(2.5, low=1.0, doc="a unit whose top-activating samples spread over more "
                                                          "effective labels (perplexity) than this is polysemantic")
    max_polysemantic_share: float = param(0.5, low=0.0, high=1.0, doc="warn when a larger share of a layer's "
                                                                      "scored units is polysemantic")
    labels: str = param(CLASSES, doc="what units are read against: 'classes' or a declared concept's name")
    strong: float = param(0.5, low=0.0, high=1.0, doc="a unit's strong activations: at least this share of its "
                                                      "maximum")
    top: int = param(200, low=2, doc="strong activations read per unit, at most (the largest)")
    min_active: int = param(5, low=1, doc="units strongly active on fewer samples are not scored")
    samples: int = param(2048, low=4, doc="samples read (seeded subset)")
    max_listed: int = param(16, low=0, doc="polysemantic units listed in the evidence, per layer")
    min_label_information: float = param(0.1, low=0.0, high=1.0, doc="judge only layers whose units carry at least "
                                                                      "this label information (0: chance, 1: each "
                                                                      "unit reads one label)")
    chance_draws: int = param(20, low=1, doc="shuffled-label draws that give the label information's chance level")


class PolysemanticUnitsEvidence(TypedDict, total=False):
    """The evidence of D102's findings (each finding holds some of these keys)."""

    effective_labels_per_unit: list
    exemplars: list
    label_coded: bool
    label_information: float
    label_information_chance: list
    labels: str
    mean_purity: float
    monosemantic_units: list
    most_read_per_unit: int
    polysemantic_count: int
    polysemantic_units: list
    purity_per_unit: list
    samples: int
    scored_units: int
    strong_share_of_max: float
    units: int


def _cost(sizes: Sizes, params: PolysemanticParams) -> Cost:
    """Activations of ``samples`` samples (one forward pass) and per-unit label statistics."""
    n = sizes.n(params.samples)
    return forwards(sizes, n) + stats_pass(sizes) + Cost(flops=unit_products(sizes, n))


COST = RuleCost(_cost, reduce="samples")


@register("polysemantic_units", PolysemanticParams, needs=("layers", "labels"), rule=RULE,
          evidence=PolysemanticUnitsEvidence, cost=COST)
def polysemantic_units(context: AuditContext, rule) -> list[Measurement]:
    params: PolysemanticParams = rule.params
    indices, activations = pooled_activations(context, params.samples, pool="max")
    labels, names = reading_labels(context, params.labels)
    labels = labels[indices]
    findings = []
    for layer in context.view.hidden_layers:
        values = activations[layer.name]
        strong = torch.where(values >= params.strong * values.amax(0).clamp_min(1e-12), values,
                             torch.zeros_like(values))
        scores = label_selectivity(strong, labels, params.top, params.min_active)
        spread = scores.effective_labels
        scored = scores.scored
        poly = scored & (spread > params.max_effective_labels)
        count = int(scored.sum())
        share = float(poly.sum()) / count if count else 0.0
        failed = share > params.max_polysemantic_share
        listed = sorted(poly.nonzero().flatten().tolist(), key=lambda u: -float(spread[u]))[:params.max_listed]
        message = (f"{int(poly.sum())} of {count} scored units of {layer.name} are polysemantic ({share:.0%}): their "
                   f"strongest activations spread over more than {params.max_effective_labels:g} {params.labels}"
                   + ("; read dictionary features (D103), not neurons, in this layer" if failed else ""))
        information = label_information(strong, labels, params.top, params.min_active, params.chance_draws,
                                        context.seed)
        coded = information.value >= params.min_label_information and information.value > information.chance_high
        if not coded:
            message = (f"the units of {layer.name} do not represent the {params.labels} (label information "
                       f"{information.value:.3f}, chance up to {information.chance_high:.3f}, judged from "
                       f"{params.min_label_information:g}): polysemanticity over the {params.labels} is not judged "
                       f"here; {int(poly.sum())} of {count} units spread over more than "
                       f"{params.max_effective_labels:g} of them")
        if not count:
            message = f"no unit of {layer.name} is active on {params.min_active} samples: nothing to read"
        findings.append(Measurement(
            message, location=Location.of_layer(layer.name),
            metric="polysemantic_share", value=share, threshold=params.max_polysemantic_share,
            judged=coded and bool(count),
            interval=_share_interval(strong, labels, params, context.seed) if count and coded else None,
            evidence={
                "label_information": round(information.value, 4),
                "label_information_chance": [round(v, 4) for v in information.chance], "label_coded": coded,
                "labels": params.labels, "samples": len(indices), "strong_share_of_max": params.strong,
                "most_read_per_unit": params.top,
                "units": layer.size, "scored_units": count, "polysemantic_count": int(poly.sum()),
                "effective_labels_per_unit": [round(float(v), 4) if s else None for v, s in zip(spread, scored)],
                "purity_per_unit": [round(float(v), 4) if s else None for v, s in zip(scores.purity, scored)],
                "mean_purity": scores.mean_purity() if count else None,
                "polysemantic_units": [{"component": layer.address(u), "effective_labels": round(float(spread[u]), 3),
                                        "labels": _top_labels(scores.distribution[u], names)} for u in listed],
                "exemplars": exemplars(context, indices, values, listed[:4], [layer.address(u) for u in listed[:4]]),
                "monosemantic_units": [{"component": layer.address(u), "label": names[int(scores.top_label[u])],
                                        "purity": round(float(scores.purity[u]), 3)}
                                       for u in (scored & ~poly).nonzero().flatten().tolist()[:params.max_listed]],
            },
        ))
    return findings


def _share_interval(strong: torch.Tensor, labels: torch.Tensor, params, seed: int) -> Interval | None:
    """Bootstrap interval of the polysemantic share over the samples: each resample rescores every unit."""
    def share(indices: np.ndarray) -> float:
        picked = torch.from_numpy(indices)
        scores = label_selectivity(strong[picked], labels[picked], params.top, params.min_active)
        poly = scores.scored & (scores.effective_labels > params.max_effective_labels)
        count = int(scores.scored.sum())
        return float(poly.sum()) / count if count else math.nan

    return bootstrap(share, len(labels), seed=seed, resamples=200)


def _top_labels(distribution, names: list[str], count: int = 3) -> list[dict]:
    values, order = distribution.topk(min(count, distribution.numel()))
    return [{"label": names[i], "share": round(float(v), 3)} for v, i in zip(values.tolist(), order.tolist()) if v > 0]
