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

Uncertainty: both scores are statistics over the samples. The IoU is resampled (percentile bootstrap, the same
draws for every unit and concept, from the per-sample intersections and unions of :func:`iou_counts`; each channel's
activation threshold stays the one of the whole dataset). The AUROC gets DeLong's (1988) analytic variance
(:func:`auroc_intervals`, vectorised over units from three rankings: no resample), so that every unit of a wide
model (36,864 MLP units in GPT-2 small) is covered, however rare the concept value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..activations import batches, hooked
from ..model_view import Layer, ModelView, units_view
from .uncertainty import LEVEL, Interval


@dataclass
class Detection:
    """How well ``component`` detects ``concept``: ``score`` by ``metric`` (``iou`` or ``auroc``)."""

    component: str
    concept: str
    score: float
    metric: str
    #: The score's interval over the samples (bootstrap for an IoU, DeLong for an AUROC), and the threshold a
    #: detector exceeds; None where no interval could be computed (a class with fewer than 2 samples).
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


def iou_counts(maps: torch.Tensor, masks: dict[str, torch.Tensor],
               quantile: float = 0.005) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, the intersection and the union (in input elements) of each unit's top-``quantile`` region with
    each concept mask: two (samples, units, concepts) tensors, whose sums over the samples make the IoU
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


def auroc_scores(activations: torch.Tensor, labels: dict[str, torch.Tensor],
                 level: float = LEVEL) -> tuple[torch.Tensor, list[str], dict[tuple[int, int], Interval | None]]:
    """(units, concept values) AUROC of each unit's per-sample activation (samples, units) for each concept value
    (from midranks, :func:`delong`: the value ``sklearn.metrics.roc_auc_score`` gives, for all units at once), the
    names of those values (``concept`` for a yes/no concept, ``concept=value`` otherwise), and each score's
    interval by (unit, concept value) index (:func:`auroc_intervals`)."""
    columns, names, intervals = [], [], {}
    for concept, (name, target) in enumerate(concept_targets(labels)):
        area, error = delong(activations, target)
        columns.append(area)
        names.append(name)
        intervals.update({(unit, concept): found for unit, found in
                          enumerate(auroc_intervals(area, error, target, level))})
    if not columns:
        return torch.zeros(activations.shape[1], 0), names, intervals
    return torch.tensor(np.array(columns).T, dtype=torch.float32), names, intervals


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


def delong(activations: torch.Tensor, positives: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(units,) AUROC of each unit's activation (samples, units) for the yes/no ``positives`` (ties count half), and
    its DeLong (DeLong, DeLong, Clarke-Pearson 1988) standard error (NaN when a class has fewer than 2 samples).
    The structural components come from midranks (Sun & Xu 2014): a positive's share of negatives below it is its
    rank among all samples minus its rank among the positives, over the negatives; likewise for a negative. Three
    rankings per block of ``chunk`` units, no loop over units."""
    from scipy.stats import rankdata

    positives = np.asarray(positives, dtype=bool)
    m, n = int(positives.sum()), int((~positives).sum())
    values = activations.double().numpy()
    areas, errors = [], []
    for begin in range(0, values.shape[1], chunk):
        block = values[:, begin:begin + chunk]
        everyone = rankdata(block, axis=0)
        above = (everyone[positives] - rankdata(block[positives], axis=0)) / max(n, 1)  # (m, units)
        below = 1 - (everyone[~positives] - rankdata(block[~positives], axis=0)) / max(m, 1)  # (n, units)
        areas.append(above.mean(0))
        with np.errstate(divide="ignore", invalid="ignore"):
            errors.append(np.sqrt(above.var(0, ddof=1) / m + below.var(0, ddof=1) / n) if min(m, n) > 1
                          else np.full(block.shape[1], np.nan))
    return np.concatenate(areas), np.concatenate(errors)


def auroc_intervals(area: np.ndarray, error: np.ndarray, positives: np.ndarray,
                    level: float = LEVEL) -> list[Interval | None]:
    """The interval of each AUROC ``area`` (units,) with its DeLong standard ``error`` (:func:`delong`) for the
    yes/no ``positives``: plus or minus ``z`` standard errors (normal approximation), clipped to [0, 1]. None for
    every unit when either class has fewer than 2 samples. A unit that separates the classes perfectly has a
    standard error of 0 (a zero-width interval at 1 or 0)."""
    from scipy.stats import norm

    positives = np.asarray(positives, dtype=bool)
    m, n = int(positives.sum()), int((~positives).sum())
    if m < 2 or n < 2:
        return [None] * len(area)
    z = float(norm.ppf(0.5 + level / 2))
    method = f"DeLong normal approximation over {m + n} samples ({m} positive)"
    lows, highs = np.clip(area - z * error, 0, 1).tolist(), np.clip(area + z * error, 0, 1).tolist()
    return [Interval(low, high, method, level) for low, high in zip(lows, highs)]


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
