"""D102: polysemantic units, read from the labels of each unit's top-activating samples."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..context import AuditContext
from ..findings import Finding, Location
from ..techniques.selectivity import label_selectivity
from .decomposition_common import CLASSES, pooled_activations, reading_labels
from .decomposition_evidence import exemplars
from .registry import param, register


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


@register("polysemantic_units", PolysemanticParams, needs=("layers", "labels"))
def polysemantic_units(context: AuditContext, rule) -> list[Finding]:
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
        status = "fail" if failed else "pass"
        message = (f"{int(poly.sum())} of {count} scored units of {layer.name} are polysemantic ({share:.0%}): their "
                   f"strongest activations spread over more than {params.max_effective_labels:g} {params.labels}"
                   + ("; read dictionary features (D103), not neurons, in this layer" if failed else ""))
        if not count:
            message = f"no unit of {layer.name} is active on {params.min_active} samples: nothing to read"
        findings.append(Finding(
            rule.id, rule.severity, status, message, location=Location.of_layer(layer.name),
            metric="polysemantic_share", value=share, threshold=params.max_polysemantic_share,
            evidence={
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


def _top_labels(distribution, names: list[str], count: int = 3) -> list[dict]:
    values, order = distribution.topk(min(count, distribution.numel()))
    return [{"label": names[i], "share": round(float(v), 3)} for v, i in zip(values.tolist(), order.tolist()) if v > 0]
