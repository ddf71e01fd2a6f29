"""D101: units that never activate on the audit data (dead), and units that never switch off (dense)."""

from __future__ import annotations

from dataclasses import dataclass

from ..context import AuditContext
from ..findings import Finding, Location
from .registry import param, register


@dataclass(frozen=True)
class DeadUnitsParams:
    activation_threshold: float = param(0.0, doc="a unit is active on a sample when its output exceeds this")
    max_dead_fraction: float = param(0.25, low=0.0, high=1.0, doc="fail a layer whose dead share exceeds this")
    max_listed: int = param(32, low=0, doc="dead (and dense) units listed in the evidence, per layer")
    dense_share: float = param(0.99, low=0.0, high=1.0, doc="a unit above 0 at every position of more than this "
                                                            "share of the samples is dense (always on)")
    max_dense_fraction: float = param(0.5, low=0.0, high=1.0, doc="fail a layer whose dense share exceeds this")


@register("dead_units", DeadUnitsParams, needs=("layers",))
def dead_units(context: AuditContext, rule) -> list[Finding]:
    params: DeadUnitsParams = rule.params
    findings = []
    for layer in context.view.hidden_layers:
        stats = context.unit_stats[layer.name]
        dead = (stats.max <= params.activation_threshold).nonzero().flatten().tolist()
        fraction = len(dead) / layer.size
        failed = fraction > params.max_dead_fraction
        findings.append(Finding(
            rule.id, rule.severity, "fail" if failed else "pass",
            f"{len(dead)} of {layer.size} units of {layer.name} never activate ({fraction:.0%})",
            location=Location.of_layer(layer.name),
            metric="dead_fraction", value=fraction, threshold=params.max_dead_fraction,
            evidence={
                "dead_units": [layer.address(u) for u in dead[:params.max_listed]],
                "dead_count": len(dead),
                "units": layer.size,
                "samples": stats.count,
                "active_fraction_per_unit": stats.active_fraction,
            },
        ))
        dense = (stats.always_fraction > params.dense_share).nonzero().flatten().tolist()
        dense_fraction = len(dense) / layer.size
        findings.append(Finding(
            rule.id, rule.severity, "fail" if dense_fraction > params.max_dense_fraction else "pass",
            f"{len(dense)} of {layer.size} units of {layer.name} never switch off ({dense_fraction:.0%} dense: above 0 "
            f"everywhere on more than {params.dense_share:.0%} of the samples)",
            location=Location.of_layer(layer.name),
            metric="dense_fraction", value=dense_fraction, threshold=params.max_dense_fraction,
            evidence={"dense_units": [layer.address(u) for u in dense[:params.max_listed]],
                      "dense_count": len(dense), "units": layer.size, "samples": stats.count,
                      "always_on_fraction_per_unit": [round(float(v), 4) for v in stats.always_fraction]},
        ))
    return findings
