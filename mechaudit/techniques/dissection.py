"""Network dissection: which units detect which concepts (Bau et al. 2017).

* Spatial concepts (a mask per sample over the input's spatial axes) against convolution channels: each channel's
  threshold is its top ``quantile`` over the whole dataset (the value only that share of its activations exceeds:
  0.005 in the paper); its activation map is upsampled to the input's resolution (bilinear), thresholded, and compared
  with the concept's masks by the dataset-wide intersection over union, sum |M & L| / sum |M | L|. A channel is a
  detector of the concept when the IoU exceeds ``min_iou`` (0.04 in the paper).
* Per-sample concept labels, and units without spatial positions (Linear units, attention heads, dictionary
  features): the area under the ROC curve of the unit's activation (mean over its positions) as a score for the
  concept's presence (one value against the rest for a concept with several values).

A unit's label is the concept it detects best; :func:`semantic_dictionary` lists them.

Uncertainty: both scores are statistics over the samples, so they are resampled (percentile bootstrap, the same
draws for every unit and concept, from per-sample values computed once): the IoU as the ratio of the resampled sums
of per-sample intersections and unions (:func:`iou_counts`; each channel's activation threshold stays the one of
the whole dataset), the AUROC as a weighted Mann-Whitney count on each resample (:func:`resampled_auroc`) for the
pairs that could cross their threshold (:func:`near_threshold`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..activations import batches, hooked
from ..model_view import Layer, ModelView, units_view
from .uncertainty import Interval


@dataclass
class Detection:
    """How well ``component`` detects ``concept``: ``score`` by ``metric`` (``iou`` or ``auroc``)."""

    component: str
    concept: str
    score: float
    metric: str
    #: The score's bootstrap interval over the samples (:class:`~.uncertainty.Interval`), and the threshold a
    #: detector exceeds; None where not resampled.
    interval: Interval | None = None
    threshold: float | None = None

    @property
    def method(self) -> str:
        return "network dissection (IoU)" if self.metric == "iou" else "concept AUROC (activation as a score)"

    @property
    def uncertain(self) -> bool:
        """True when the score's interval straddles the threshold: detector or not is a coin flip."""
        return self.interval is not None and self.threshold is not None and self.interval.straddles(self.threshold)

    def as_dict(self) -> dict:
        row = {"component": self.component, "concept": self.concept, "score": self.score, "metric": self.metric,
               "method": self.method}
        if self.interval is not None:
            row.update(interval=[round(self.interval.low, 6), round(self.interval.high, 6)],
                       uncertain=self.uncertain)
        return row


def activation_maps(view: ModelView, layer: Layer, inputs: torch.Tensor, batch_size: int,
                    device: torch.device) -> torch.Tensor:
    """A convolution layer's activation maps on ``inputs``: (samples, units, *spatial), on the CPU."""
    parts: list[torch.Tensor] = []
    with hooked(view, [layer], lambda _layer, output: parts.append(output.float().cpu())), torch.no_grad():
        for _, batch in batches(inputs, batch_size, device):
            view.model(batch)
    return torch.cat(parts)


def iou_scores(maps: torch.Tensor, masks: dict[str, torch.Tensor], quantile: float = 0.005) -> torch.Tensor:
    """(units, concepts) dataset-wide IoU of each unit's top-``quantile`` region (upsampled to the masks'
    resolution) with each concept mask; ``maps`` (samples, units, *spatial), masks (samples, *input spatial)."""
    intersection, union = iou_counts(maps, masks, quantile)
    return (intersection.sum(0) / union.sum(0).clamp_min(1)).float()


def iou_counts(maps: torch.Tensor, masks: dict[str, torch.Tensor],
               quantile: float = 0.005) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, the intersection and the union (in input elements) of each unit's top-``quantile`` region with
    each concept mask: two (samples, units, concepts) tensors, whose sums over the samples make :func:`iou_scores`
    (and whose resampled sums its bootstrap)."""
    labels = torch.stack([mask > 0.5 for mask in masks.values()], 1)  # (samples, concepts, *input spatial)
    size = tuple(labels.shape[2:])
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
    shape = (maps.shape[0], maps.shape[1], labels.shape[1])
    intersection, union = torch.zeros(shape, dtype=torch.float64), torch.zeros(shape, dtype=torch.float64)
    for unit in range(maps.shape[1]):
        raw = maps[:, unit].flatten().double()
        threshold = torch.quantile(raw[_subsample(raw.numel())], 1 - quantile)  # at the layer's resolution
        upsampled = F.interpolate(maps[:, unit:unit + 1], size=size, mode=mode, align_corners=False)[:, 0]
        region = (upsampled > threshold).unsqueeze(1)  # (samples, 1, *spatial)
        intersection[:, unit] = (region & labels).flatten(2).sum(2).double()
        union[:, unit] = (region | labels).flatten(2).sum(2).double()
    return intersection, union


def _subsample(count: int, limit: int = 2**24) -> slice:
    """``torch.quantile`` takes at most 2**24 values: an evenly strided subset beyond that."""
    return slice(None, None, max(1, -(-count // limit)))


def auroc_scores(activations: torch.Tensor, labels: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[str]]:
    """(units, concept values) AUROC of each unit's per-sample activation (samples, units) for each concept value,
    and the names of those values (``concept`` for a yes/no concept, ``concept=value`` otherwise)."""
    from sklearn.metrics import roc_auc_score

    columns, names = [], []
    for name, target in concept_targets(labels):
        columns.append([roc_auc_score(target, activations[:, unit].numpy()) for unit in range(activations.shape[1])])
        names.append(name)
    if not columns:
        return torch.zeros(activations.shape[1], 0), names
    return torch.tensor(np.array(columns).T, dtype=torch.float32), names


def concept_targets(labels: dict[str, torch.Tensor]) -> list[tuple[str, np.ndarray]]:
    """Each concept value scored by AUROC and its yes/no target per sample (``concept`` for a yes/no concept,
    ``concept=value`` for each value of another; a concept with a single value is left out)."""
    targets = []
    for concept, values in labels.items():
        levels = values.unique().tolist()
        if len(levels) < 2:
            continue
        binary = len(levels) == 2 and set(levels) <= {0, 1}
        for level in ([1] if binary else levels):
            targets.append((concept if binary else f"{concept}={level}", (values == level).numpy()))
    return targets


def near_threshold(scores: torch.Tensor, positives: np.ndarray, threshold: float, z: float = 4.0) -> torch.Tensor:
    """(units,) which AUROCs of one concept could lie above ``threshold``: those within ``z`` Hanley-McNeil (1982)
    standard errors below it, or above it (every detector). The others are far below in any resample, so the
    bootstrap skips them."""
    area = scores.double().clamp(1e-6, 1 - 1e-6)
    n1, n2 = int(positives.sum()), int((~positives).sum())
    q1, q2 = area / (2 - area), 2 * area ** 2 / (1 + area)
    variance = (area * (1 - area) + (n1 - 1) * (q1 - area ** 2) + (n2 - 1) * (q2 - area ** 2)) / max(n1 * n2, 1)
    return scores.double() + z * variance.clamp_min(0).sqrt() > threshold


def resampled_auroc(activations: torch.Tensor, positives: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(resamples, units) AUROC of each unit's activation (samples, units) for the yes/no ``positives`` in each
    resample, given as how many times it draws each sample (``weights``, (resamples, samples)): the Mann-Whitney
    count of (positive, negative) pairs ordered right, ties counting half, each pair weighted by the product of
    its draws. The samples are sorted once per unit, then every resample is a cumulative sum: no re-ranking per
    resample. NaN on a resample without both classes."""
    values = activations.double().numpy()
    weights = np.asarray(weights, dtype=float)
    positive_weight, negative_weight = weights * positives, weights * ~positives
    scale = positive_weight.sum(1) * negative_weight.sum(1)
    found = np.full((len(weights), values.shape[1]), np.nan)
    valid = scale > 0
    for unit in range(values.shape[1]):
        order = np.argsort(values[:, unit], kind="stable")
        ordered = values[order, unit]
        starts = np.r_[True, ordered[1:] != ordered[:-1]]  # where each group of tied values begins
        group = np.cumsum(starts) - 1
        first = np.flatnonzero(starts)
        after = np.r_[first[1:], len(ordered)]
        below = np.concatenate([np.zeros((len(weights), 1)), np.cumsum(negative_weight[:, order], axis=1)], 1)
        credit = below[:, first] + 0.5 * (below[:, after] - below[:, first])  # negatives below, half the tied ones
        counted = (positive_weight[:, order] * credit[:, group]).sum(1)
        found[valid, unit] = counted[valid] / scale[valid]
    return found


def detections(components: list[str], scores: torch.Tensor, concepts: list[str], metric: str,
               threshold: float, intervals: dict[tuple[int, int], Interval | None] | None = None) -> list[Detection]:
    """Every (unit, concept) pair scoring above ``threshold``, with its interval from ``intervals`` (by
    ``(unit, concept)`` index) where given."""
    found = []
    for unit, concept in (scores > threshold).nonzero().tolist():
        interval = (intervals or {}).get((unit, concept))
        found.append(Detection(components[unit], concepts[concept], float(scores[unit, concept]), metric,
                               interval, threshold if interval is not None else None))
    return found


def semantic_dictionary(found: list[Detection]) -> list[Detection]:
    """Each component's best concept (highest score, IoU before AUROC), strongest first."""
    best: dict[str, Detection] = {}
    for detection in found:
        current = best.get(detection.component)
        key = (detection.metric == "iou", detection.score)
        if current is None or key > (current.metric == "iou", current.score):
            best[detection.component] = detection
    return sorted(best.values(), key=lambda d: (d.metric != "iou", -d.score))


def per_sample(maps: torch.Tensor, layer: Layer) -> torch.Tensor:
    """(samples, units): each unit's mean over its positions."""
    return units_view(maps, layer).mean(2)
