"""L201: reliance on a forbidden input region (a declared mask)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..activations import model_outputs
from ..context import AuditContext
from ..findings import Finding, Location
from ..techniques.attribution import METHODS, attribute
from .registry import param, register


@dataclass(frozen=True)
class ForbiddenInputParams:
    max_attribution_ratio: float = param(2.0, low=0.0, doc="fail when in-mask attribution share / mask area exceeds")
    max_flip_rate: float = param(0.05, low=0.0, high=1.0, doc="fail when more predictions flip without the region")
    method: str = param("integrated_gradients", choices=METHODS, doc="captum attribution method")
    n_steps: int = param(32, low=2, doc="integration steps for integrated gradients")
    samples: int = param(512, low=1, doc="samples attributed (seeded subset)")


@register("forbidden_input", ForbiddenInputParams, needs=("masks", "classification"))
def forbidden_input(context: AuditContext, rule) -> list[Finding]:
    params: ForbiddenInputParams = rule.params
    indices = context.sample_indices(params.samples)
    inputs = context.data.inputs[indices]
    predictions = context.predictions[indices]
    attributions = attribute(context.model, inputs, predictions, context.device, params.method,
                             n_steps=params.n_steps).abs()
    total = attributions.flatten(1).sum(1)
    if not torch.isfinite(total).all() or float(total.max()) <= 1e-12:
        raise ValueError("attributions are zero or not finite for every sample: the model's output is not "
                         "differentiable with respect to its inputs, so attribution cannot be trusted")
    total = total.clamp_min(1e-12)
    findings = []
    for name, mask in context.data.masks.items():
        mask = mask[indices] if mask.shape == context.data.inputs.shape else mask.expand_as(inputs)
        location = Location(component=f"input:{name}")
        share = (attributions * mask).flatten(1).sum(1) / total
        area = float(mask.mean())
        ratio = float(share.mean()) / area
        removed = inputs * (1 - mask)  # the region replaced by the zero baseline
        flipped = _predict(context, removed) != predictions
        flip_rate = float(flipped.float().mean())
        evidence = {
            "method": params.method, "samples": len(indices), "mask_area_share": area,
            "attribution_share_in_mask": float(share.mean()), "attribution_ratio": ratio, "flip_rate": flip_rate,
            "per_class": _per_class(context, predictions, share, flipped),
        }
        findings.append(Finding(
            rule.id, rule.severity, "fail" if ratio > params.max_attribution_ratio else "pass",
            f"{float(share.mean()):.1%} of the attribution falls in '{name}', which covers {area:.1%} of the input "
            f"({ratio:.1f}x its share)",
            location=location, metric="attribution_ratio", value=ratio, threshold=params.max_attribution_ratio,
            evidence=evidence,
        ))
        findings.append(Finding(
            rule.id, rule.severity, "fail" if flip_rate > params.max_flip_rate else "pass",
            f"{flip_rate:.1%} of predictions change when '{name}' is replaced by the baseline",
            location=location, metric="flip_rate", value=flip_rate, threshold=params.max_flip_rate,
            evidence={"flipped": int(flipped.sum()), "samples": len(indices)},
        ))
    return findings


def _predict(context: AuditContext, inputs: torch.Tensor) -> torch.Tensor:
    return model_outputs(context.model, inputs, context.batch_size, context.device).argmax(-1)


def _per_class(context: AuditContext, predictions: torch.Tensor, share: torch.Tensor,
               flipped: torch.Tensor) -> list[dict]:
    rows = []
    for cls in predictions.unique().tolist():
        chosen = predictions == cls
        rows.append({"predicted_class": context.class_name(cls), "samples": int(chosen.sum()),
                     "attribution_share_in_mask": float(share[chosen].mean()),
                     "flip_rate": float(flipped[chosen].float().mean())})
    return rows
