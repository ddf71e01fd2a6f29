"""R303: how much of the behaviour's attribution flows from a protected input region, and what-if it were cut.

The flow is measured on the audit inputs against their mean, never on the declared pairs: pairs that differ only
in the region would route all of their difference through it by construction. Two what-if edits are reported:
mean ablation of the pathway's units, and directional ablation of the region's trace at each layer (which removes
the region's effect where unit ablation, in a dense layer, cannot)."""

from __future__ import annotations

from dataclasses import dataclass

from ..context import AuditContext
from ..findings import Finding, Location
from ..techniques.circuits import INPUT, attribution_flow
from ..techniques.edits import what_if_erased, what_if_suppressed
from .circuit_common import circuit_problem, circuit_scores, hidden_nodes, mean_values
from .registry import param, register


@dataclass(frozen=True)
class ProtectedPathwayParams:
    samples: int = param(512, low=1, doc="samples (or pairs) the behaviour is measured on")
    max_share: float = param(0.2, low=0.0, high=1.0, doc="fail when a protected region carries more of the flow")
    edit_nodes: int = param(3, low=0, doc="units on the protected pathway suppressed in the what-if edit")


@register("protected_pathway", ProtectedPathwayParams, needs=("layers", "behaviour", "masks", "classification"))
def protected_pathway(context: AuditContext, rule) -> list[Finding]:
    params: ProtectedPathwayParams = rule.params
    problem = circuit_problem(context, params.samples, use_pairs=False)
    scores = circuit_scores(context, params.samples, use_pairs=False)
    output_layer = context.view.layers[-1].name
    sinks = {n: s for n, s in scores.nodes.items() if scores.node_layer[n] == output_layer and s}
    if not sinks:
        raise ValueError("no output unit carries the behaviour's attribution")
    flow = attribution_flow(scores, sinks)
    inputs_total = sum(v for n, v in flow.items() if scores.node_layer.get(n) == INPUT) or 1.0
    hidden = hidden_nodes(context)
    findings = []
    for name, mask in context.data.masks.items():
        region = f"{INPUT}:{name}"
        if region not in flow and region not in scores.node_layer:
            raise ValueError(f"input region '{name}' got no edges: the first audited layer does not read the input")
        share = flow.get(region, 0.0) / inputs_total
        specific = _region_specific_units(scores, flow, hidden, region)
        pathway = sorted(specific, key=lambda n: -specific[n])
        units_edit = what_if_suppressed(context.view, pathway[:params.edit_nodes], mean_values(context),
                                        problem.inputs, problem.labels, mask, context.batch_size, context.device)
        direction_edit = what_if_erased(context.view, context.view.hidden_layers, problem.inputs, problem.labels,
                                        mask, context.batch_size, context.device)
        findings.append(Finding(
            rule.id, rule.severity, "fail" if share > params.max_share else "pass",
            f"{share:.0%} of the attribution of the {problem.description} flows from '{name}' "
            f"(which covers {float(mask.mean()):.0%} of the input); the units most specific to it: "
            f"{', '.join(pathway[:3]) or 'none'}",
            location=Location(component=region), metric="protected_flow_share", value=share,
            threshold=params.max_share,
            evidence={"region_area_share": float(mask.mean()),
                      "pathway": [{"component": n, "share_from_region": specific[n], "flow": flow[n]}
                                  for n in pathway[:10]],
                      "what_if_units": units_edit, "what_if_direction": direction_edit},
        ))
    return findings


def _region_specific_units(scores, flow: dict[str, float], hidden: list[str], region: str,
                           min_flow: float = 0.01) -> dict[str, float]:
    """For each unit carrying at least ``min_flow`` of the largest unit flow, the share of its own attribution
    that comes from ``region``: the units most specific to the region come first in its pathway."""
    floor = min_flow * max((flow.get(n, 0.0) for n in hidden), default=0.0)
    return {node: attribution_flow(scores, {node: 1.0}).get(region, 0.0)
            for node in hidden if flow.get(node, 0.0) > floor and floor > 0}
