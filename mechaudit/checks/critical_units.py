"""L202: units whose ablation alone drops accuracy by more than a threshold."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..context import AuditContext
from ..findings import Finding, Location
from ..techniques.ablation import ablation_outputs
from .registry import param, register


@dataclass(frozen=True)
class CriticalUnitsParams:
    max_accuracy_drop: float = param(0.1, low=0.0, high=1.0, doc="fail a unit whose ablation drops accuracy more")
    modes: str = param("zero,mean", choices=("zero", "mean", "zero,mean"), doc="ablations measured and reported")
    flag_on: str = param("mean", choices=("zero", "mean", "any"), doc="which ablation's drop flags a unit")
    top_k: int = param(10, low=1, doc="units listed per layer in the evidence")


@register("critical_units", CriticalUnitsParams, needs=("layers", "labels", "classification"))
def critical_units(context: AuditContext, rule) -> list[Finding]:
    params: CriticalUnitsParams = rule.params
    indices = context.sample_indices()
    inputs, labels = context.data.inputs[indices], context.data.labels[indices]
    base_accuracy = float((context.predictions[indices] == labels).float().mean())
    findings = []
    for layer in context.view.hidden_layers:
        stats = context.unit_stats[layer.name]
        drops = {}
        for mode in params.modes.split(","):
            values = torch.zeros_like(stats.mean_map) if mode == "zero" else stats.mean_map
            outputs = ablation_outputs(context.model, context.view.site(layer), layer, inputs,
                                       list(range(layer.size)), values.float(), context.batch_size, context.device)
            accuracy = (outputs.argmax(-1) == labels).float().mean(dim=1)
            drops[mode] = base_accuracy - accuracy
        if params.flag_on != "any" and params.flag_on not in drops:
            raise ValueError(f"flag_on = '{params.flag_on}' needs '{params.flag_on}' in modes = '{params.modes}'")
        drop = torch.stack(list(drops.values())).amax(dim=0) if params.flag_on == "any" else drops[params.flag_on]
        ranked = drop.argsort(descending=True).tolist()
        table = [{"unit": layer.address(u), **{f"{m}_drop": float(d[u]) for m, d in drops.items()}}
                 for u in ranked[:params.top_k]]
        critical = [u for u in ranked if drop[u] > params.max_accuracy_drop]
        for unit in critical:
            findings.append(Finding(
                rule.id, rule.severity, "fail",
                f"{params.flag_on} ablation of {layer.address(unit)} alone drops accuracy by {float(drop[unit]):.1%} "
                f"(from {base_accuracy:.1%})",
                location=Location.of_unit(layer.name, layer.unit_name(unit)),
                metric="accuracy_drop", value=float(drop[unit]), threshold=params.max_accuracy_drop,
                evidence={"base_accuracy": base_accuracy, **{f"{m}_drop": float(d[unit]) for m, d in drops.items()}},
            ))
        if not critical:
            findings.append(Finding(
                rule.id, rule.severity, "pass",
                f"no single unit of {layer.name} is critical (largest drop {float(drop.max()):.1%})",
                location=Location.of_layer(layer.name),
                metric="accuracy_drop", value=float(drop.max()), threshold=params.max_accuracy_drop,
                evidence={"base_accuracy": base_accuracy, "samples": len(indices), "top_units": table},
            ))
    return findings
