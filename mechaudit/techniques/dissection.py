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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..activations import batches, hooked
from ..model_view import Layer, ModelView, units_view


@dataclass
class Detection:
    """How well ``component`` detects ``concept``: ``score`` by ``metric`` (``iou`` or ``auroc``)."""

    component: str
    concept: str
    score: float
    metric: str

    @property
    def method(self) -> str:
        return "network dissection (IoU)" if self.metric == "iou" else "concept AUROC (activation as a score)"

    def as_dict(self) -> dict:
        return {"component": self.component, "concept": self.concept, "score": self.score, "metric": self.metric,
                "method": self.method}


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
    labels = torch.stack([mask > 0.5 for mask in masks.values()], 1)  # (samples, concepts, *input spatial)
    size = tuple(labels.shape[2:])
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
    scores = torch.zeros(maps.shape[1], labels.shape[1])
    for unit in range(maps.shape[1]):
        raw = maps[:, unit].flatten().double()
        threshold = torch.quantile(raw[_subsample(raw.numel())], 1 - quantile)  # at the layer's resolution
        upsampled = F.interpolate(maps[:, unit:unit + 1], size=size, mode=mode, align_corners=False)[:, 0]
        region = (upsampled > threshold).unsqueeze(1)  # (samples, 1, *spatial)
        intersection = (region & labels).flatten(2).sum((0, 2)).double()
        union = (region | labels).flatten(2).sum((0, 2)).double()
        scores[unit] = (intersection / union.clamp_min(1)).float()
    return scores


def _subsample(count: int, limit: int = 2**24) -> slice:
    """``torch.quantile`` takes at most 2**24 values: an evenly strided subset beyond that."""
    return slice(None, None, max(1, -(-count // limit)))


def auroc_scores(activations: torch.Tensor, labels: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[str]]:
    """(units, concept values) AUROC of each unit's per-sample activation (samples, units) for each concept value,
    and the names of those values (``concept`` for a yes/no concept, ``concept=value`` otherwise)."""
    from sklearn.metrics import roc_auc_score

    columns, names = [], []
    for concept, values in labels.items():
        levels = values.unique().tolist()
        if len(levels) < 2:
            continue
        binary = len(levels) == 2 and set(levels) <= {0, 1}
        for level in ([1] if binary else levels):
            target = (values == level).numpy()
            columns.append([roc_auc_score(target, activations[:, unit].numpy())
                            for unit in range(activations.shape[1])])
            names.append(concept if binary else f"{concept}={level}")
    if not columns:
        return torch.zeros(activations.shape[1], 0), names
    return torch.tensor(np.array(columns).T, dtype=torch.float32), names


def detections(components: list[str], scores: torch.Tensor, concepts: list[str], metric: str,
               threshold: float) -> list[Detection]:
    """Every (unit, concept) pair scoring above ``threshold``."""
    found = []
    for unit, concept in (scores > threshold).nonzero().tolist():
        found.append(Detection(components[unit], concepts[concept], float(scores[unit, concept]), metric))
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
