"""L206: network dissection, and the semantic dictionary it produces.

Every unit of every hidden layer (and every dictionary feature another rule trained, see below) is scored against
every declared concept: IoU with spatial concept masks for convolution channels, AUROC against per-sample concept
labels otherwise (:mod:`..techniques.dissection`). The semantic dictionary (each detector's best concept) is the
finding's ``semantic_dictionary`` evidence and, through :func:`dissection_dictionary` (the shared artifact
:data:`DISSECTION`, computed on first use whatever the rule order), the circuit graph's labels.

Dictionary features: when a rule of the audit (D103) learns dictionaries (the shared artifact
:data:`~.dictionary_features.LEARNED_DICTIONARIES`, computed on first use), ``{layer: dictionary}`` where
``dictionary.encode((vectors, units)) -> (vectors, features)`` encodes one activation vector per sample and
position (a callable works too) and ``dictionary.address(i)`` names a feature (default ``layer:feat<i>``), each
feature's activation averaged over a sample's positions is dissected by AUROC too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypedDict

import numpy as np
import torch

from ..addresses import FEATURE_PREFIX, format_address
from ..context import Artifact, AuditContext
from ..cost import Cost, RuleCost, Sizes, forwards, stats_pass
from ..findings import Measurement
from ..model_view import units_view
from ..techniques import resampled
from ..techniques.dissection import (
    Detection,
    activation_maps,
    auroc_scores,
    detections,
    iou_counts,
    per_sample,
    semantic_dictionary,
)
from ..techniques.uncertainty import RESAMPLES, Interval
from .dictionary_features import learned_dictionaries
from .registry import RuleDefinition, RuleDocs, param, register
from .representation_common import sampled_activations

CHECK = "dissection"


DOCS = RuleDocs(
    summary="Which units detect which declared concepts: the semantic dictionary that labels the other findings.",
    what="""
Every unit of every hidden layer is scored against every declared concept. Spatial concepts (a mask per sample,
`[data.concepts]` arrays shaped like the inputs' spatial axes) against convolution channels: the channel's
activation map is upsampled to the input's resolution and thresholded at the channel's top `quantile` of
activations over the dataset, and compared with the concept masks by intersection over union over the dataset;
the channel detects the concept above `min_iou`. Per-sample concept labels, and units without spatial positions
(Linear units, attention heads, dictionary features another rule shared as the artifact `dictionary_features`):
the AUROC of the unit's activation as a score for the concept; a detector above `min_auroc`. The semantic
dictionary (each detector's best concept, e.g. `features.0:ch0` -> `watermark`, IoU 0.12) is the finding's
`semantic_dictionary` evidence and the audit's shared artifact of that name, which the report and the circuit
graph use as labels. This rule describes; it does not judge.
""",
    why="""
A unit's address says where, not what. Labels from dissection let a reviewer read the other findings (a critical
unit, a circuit node, a patching result) as concepts, and show whether a model represents a concept it should
not use (a watermark, a protected attribute).
""",
    how="""
Network dissection (Bau, Zhou, Khosla, Oliva, Torralba 2017) with the paper's top quantile (0.005) and IoU
threshold (0.04); the AUROC threshold 0.9 is the conventional mark of an excellent detector. Measured on the
embedded examples (concepts `loop`, the enclosed holes of a digit, and `watermark`, the stamped patch):
`features.0:ch0` detects the watermark with IoU 0.12 in both `digits` and `digits-control` (the control saw
watermarks too, they just carried no label), `features.2:ch8` the loops (IoU 0.10 and 0.11); the best AUROC of a
`classifier.0` unit is 0.71 for `loop` and 0.84 (0.68 in the control) for the watermark: no Linear detector. In
the tests a planted square detector is found (channel 0 of a convolution summing a 3x3 neighbourhood) and
nothing is found against masks drawn elsewhere.
Intervals: every score is a statistic over the dissected samples, so it carries a 95% interval over them (no model
run per resample). The IoU: a percentile bootstrap (500 resamples, seeded, the same resamples for every unit and
concept) of the per-sample intersections and unions (each channel's activation threshold stays the top quantile
of the whole dataset). The AUROC: DeLong's analytic variance (DeLong et al. 1988, vectorised over the units from
three rankings), for every unit and concept value however many units a model has: a bootstrap of the AUROC of
36,864 GPT-2 MLP units took ~200 s per concept value, and screening the units first did not help for a rare value
(5 positives of 512 put every unit within reach of 0.9). It is a normal approximation, loose with few positives,
and zero-width for a unit that separates the classes perfectly. Each semantic-dictionary entry shows its
`interval` and whether it is `uncertain` (the interval straddles its threshold: detector or not is a coin flip);
`uncertain_detections` lists those, detectors and near misses alike, and the message counts them. The finding's
value, the number of detectors, carries a range rather than a confidence interval (its method says so): from the
components with a score whose interval lies wholly above its threshold to the detectors plus the components with
a near miss (a bootstrap of the count itself drifts upward when many scores sit just below the threshold).
Measured on `digits`: 4 detectors (range 3-8); `features.0:ch0` -> watermark IoU 0.116 (0.097-0.134) and
`features.2:ch8` -> loop 0.099 (0.072-0.126) are certain, 5 unit-concept scores straddle `min_iou` (e.g.
`features.0:ch4` -> watermark, 0.045, 0.033-0.059).
""",
    fix="""
Nothing to fix by itself. If a unit detects a concept the model must not use, check with L201 (the input
region), L205 (what the output carries) and L207 (what carries the behaviour) whether it is used.
""",
    references=(
        "Bau, Zhou, Khosla, Oliva, Torralba (2017). Network Dissection: Quantifying Interpretability of Deep "
        "Visual Representations. CVPR.",
        "Mu, Andreas (2020). Compositional Explanations of Neurons. NeurIPS.",
    ),
)
RULE = RuleDefinition("L206", "network-dissection", "info", DOCS)


@dataclass(frozen=True)
class DissectionParams:
    quantile: float = param(0.005, low=0.0, high=1.0, doc="top share of a channel's activations that forms its "
                                                          "region (Bau et al. 2017)")
    min_iou: float = param(0.04, low=0.0, high=1.0, doc="a channel detects a spatial concept above this IoU")
    min_auroc: float = param(0.9, low=0.5, high=1.0, doc="a unit detects a per-sample concept above this AUROC")
    samples: int = param(512, low=2, doc="samples dissected (seeded subset)")
    max_listed: int = param(64, low=1, doc="entries of the semantic dictionary listed in the evidence")


class DissectionEvidence(TypedDict, total=False):
    """The evidence of L206's findings (each finding holds some of these keys)."""

    per_concept: list
    samples: int
    semantic_dictionary: list
    thresholds: dict
    uncertain_detections: list  # unit-concept scores whose 95% interval straddles their detection threshold
    units_scored: int


#: Time of the AUROC scores and their DeLong intervals per unit, sample and concept value, in calibrated matrix-product
#: operations: `auroc_scores` on 512 samples x 36,864 units (GPT-2 small's MLP units) took 4-8 s on a loaded 2-core
#: machine, 1.6e4-2.3e4 times the calibrated seconds per operation (scipy's rankings are not matrix products).
_AUROC_FLOPS = 2e4


def _cost(sizes: Sizes, params: DissectionParams) -> Cost:
    """Activations of ``samples`` samples (one forward pass) against each concept mask, and the scores with their
    intervals: three rankings of every unit's activations (DeLong's AUROC and its variance) and the IoUs' resampled
    sums, per concept value (the sizes do not carry the concepts: one value is counted)."""
    n = sizes.n(params.samples)
    ranking = _AUROC_FLOPS * n * sizes.hidden_units
    resampled_sums = 2.0 * RESAMPLES * n * sizes.hidden_units
    return forwards(sizes, n) + stats_pass(sizes) + Cost(flops=ranking + resampled_sums)


COST = RuleCost(_cost, reduce="samples")


@register(CHECK, DissectionParams, needs=("concepts", "layers"), rule=RULE,
          evidence=DissectionEvidence, cost=COST)
def dissection(context: AuditContext, rule) -> list[Measurement]:
    params: DissectionParams = rule.params
    dissected = context.shared(DISSECTION, params)
    found, scored = dissected.found, dissected.scored
    dictionary = [d.as_dict() for d in semantic_dictionary(found)]
    uncertain = sorted([d for d in found if d.uncertain] + dissected.near_misses, key=lambda d: -d.score)
    per_concept = []
    for concept in sorted({d.concept for d in found} | set(context.data.concepts)):
        mine = [d for d in found if d.concept == concept or d.concept.startswith(f"{concept}=")]
        best = max(mine, key=lambda d: d.score, default=None)
        per_concept.append({"concept": concept, "detectors": len({d.component for d in mine}),
                            "best_component": best.component if best else None,
                            "best_score": best.score if best else None, "metric": best.metric if best else None})
    detectors = len(dictionary)
    return [Measurement(
        f"{detectors} of {scored} units detect a declared concept"
        + (f"; strongest: {dictionary[0]['component']} -> '{dictionary[0]['concept']}' "
           f"({dictionary[0]['metric']} {dictionary[0]['score']:.2f})" if dictionary else "")
        + (f" [uncertain: {len(uncertain)} unit-concept score(s) have a 95% interval that straddles the detection "
           f"threshold, e.g. {uncertain[0].component} -> '{uncertain[0].concept}' ({uncertain[0].metric} "
           f"{uncertain[0].score:.3g}, {uncertain[0].interval.low:.3g}..{uncertain[0].interval.high:.3g})]"
           if uncertain else ""),
        metric="detectors", value=float(detectors), interval=dissected.detectors_interval,
        evidence={"semantic_dictionary": dictionary[:params.max_listed], "per_concept": per_concept,
                  "uncertain_detections": [d.as_dict() for d in uncertain[:params.max_listed]],
                  "units_scored": scored, "samples": min(params.samples, len(context.data)),
                  "thresholds": {"quantile": params.quantile, "min_iou": params.min_iou,
                                 "min_auroc": params.min_auroc}},
    )]


def dissection_dictionary(context: AuditContext) -> list[dict]:
    """The semantic dictionary, computed once per audit with the dissection rule's parameters, on first use by
    whichever rule asks (empty when no rule of the audit dissects, or no concept is declared)."""
    rule = context.rule_for_check(CHECK)
    if rule is None or not context.data.concepts or not context.view.hidden_layers:
        return []
    return [d.as_dict() for d in semantic_dictionary(context.shared(DISSECTION, rule.params).found)]


@dataclass
class Dissected:
    """Every detection of every unit and dictionary feature (with its interval), the number of components scored,
    the unit-concept pairs below their threshold whose interval reaches above it, and the range of the number of
    detectors those intervals allow."""

    found: list[Detection]
    scored: int
    near_misses: list[Detection] = field(default_factory=list)
    detectors_interval: Interval | None = None


class _Resampled:
    """The intervals of every score of one dissection: the IoUs bootstrapped over the same draws of the samples, the
    AUROCs by DeLong's analytic variance; pairs below their threshold whose interval reaches above it are kept as
    near misses."""

    def __init__(self, samples: int, seed: int) -> None:
        self.samples = samples
        self.draws = resampled.draws(samples, seed=seed)
        self.weights = resampled.counts(self.draws, samples)
        self.near_misses: list[Detection] = []
        self.certain: set[str] = set()  # components with a score whose interval lies wholly above its threshold

    def judge(self, components: list[str], scores: torch.Tensor, names: list[str], metric: str, threshold: float,
              intervals: dict[tuple[int, int], Interval | None]) -> list[Detection]:
        """The detections of ``scores`` (units, concepts) with their ``intervals`` (by (unit, concept) index)."""
        for (unit, concept), interval in intervals.items():
            if interval is None:
                continue
            if interval.low > threshold:
                self.certain.add(components[unit])
            if float(scores[unit, concept]) <= threshold and interval.straddles(threshold):
                self.near_misses.append(Detection(components[unit], names[concept], float(scores[unit, concept]),
                                                  metric, interval, threshold))
        return detections(components, scores, names, metric, threshold, intervals)

    def iou(self, components: list[str], maps: torch.Tensor, masks: dict, params: DissectionParams) -> list[Detection]:
        intersection, union = iou_counts(maps, masks, params.quantile)
        scores = (intersection.sum(0) / union.sum(0).clamp_min(1)).float()
        units, concepts = scores.shape
        table = resampled.ratio_of_sums(intersection.flatten(1).numpy(), union.flatten(1).numpy(), self.weights)
        table = np.nan_to_num(table, nan=0.0)  # no union: IoU 0
        found = resampled.intervals(table, self.samples)
        intervals = {(u, c): found[u * concepts + c] for u in range(units) for c in range(concepts)}
        return self.judge(components, scores, list(masks), "iou", params.min_iou, intervals)

    def auroc(self, components: list[str], per_unit: torch.Tensor, labels: dict, threshold: float) -> list[Detection]:
        scores, names, intervals = auroc_scores(per_unit, labels)
        return self.judge(components, scores, names, "auroc", threshold, intervals)

    def detectors_range(self, found: list[Detection]) -> Interval:
        """The range of the number of detectors that the scores' intervals allow: from the components with a score
        whose interval lies wholly above its threshold to every detector plus every component with a near miss.
        Not a confidence interval of the count (the per-pair intervals are not simultaneous)."""
        detectors = {d.component for d in found}
        low = len(self.certain & detectors)
        high = len(detectors | {d.component for d in self.near_misses})
        return Interval(float(low), float(high), "range of the per-score 95% intervals: components whose interval "
                        "lies above its threshold .. detectors plus near misses")


def _dissect(context: AuditContext, params: DissectionParams) -> Dissected:
    """Every detection of every unit and dictionary feature, with the intervals of their scores."""
    data = context.data
    indices, activations = sampled_activations(context, params.samples)
    inputs = data.inputs[indices]
    masks = {name: mask[indices] for name, mask in data.concept_masks.items()}
    labels = {name: values[indices] for name, values in data.concepts.items()}
    boot = _Resampled(len(indices), context.seed)
    found: list[Detection] = []
    scored = 0
    for layer in context.view.hidden_layers:
        components = [layer.address(u) for u in range(layer.size)]
        scored += layer.size
        spatial = layer.kind == "conv" and data.is_spatial and masks
        if spatial:
            maps = activation_maps(context.view, layer, inputs, context.batch_size, context.device)
            if maps.dim() == inputs.dim():  # same number of spatial axes as the input
                found += boot.iou(components, maps, masks, params)
                per_unit = per_sample(maps, layer)
                rest = {k: v for k, v in labels.items() if k not in masks}
            else:
                per_unit, rest = activations[layer.name], labels
        else:
            per_unit, rest = activations[layer.name], labels
        found += boot.auroc(components, per_unit, rest, params.min_auroc)
    for layer_name, dictionary in learned_dictionaries(context).items():
        if layer_name not in activations:
            continue
        layer = context.view.layer(layer_name)
        units = units_view(activation_maps(context.view, layer, inputs, context.batch_size, context.device), layer)
        vectors = units.transpose(1, 2)  # (samples, positions, units): one activation vector per position
        encode = getattr(dictionary, "encode", dictionary)
        with torch.no_grad():
            features = encode(vectors.reshape(-1, vectors.shape[-1])).float().cpu()
        per_sample_features = features.reshape(vectors.shape[0], vectors.shape[1], -1).mean(1)
        address = getattr(dictionary, "address", lambda i, name=layer_name: format_address(name, FEATURE_PREFIX, i))
        components = [address(i) for i in range(per_sample_features.shape[1])]
        scored += len(components)
        found += boot.auroc(components, per_sample_features, labels, params.min_auroc)
    return Dissected(found, scored, boot.near_misses, boot.detectors_range(found))


#: Every detection of every unit and dictionary feature and the number of components scored, by the dissection
#: rule's parameters: the semantic dictionary, computed on first use by L206 or by a rule that labels with it.
DISSECTION: Artifact[Dissected] = Artifact("dissection", _dissect)
