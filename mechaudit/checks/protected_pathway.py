"""R303: how much of the behaviour's attribution flows from a protected input region, and what-if it were cut.

The flow is measured on the audit inputs against their mean, never on the declared pairs: pairs that differ only
in the region would route all of their difference through it by construction. Two what-if edits are reported:
mean ablation of the pathway's units, and directional ablation of the region's trace at each layer (which removes
the region's effect where unit ablation, in a dense layer, cannot)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

from ..context import AuditContext
from ..findings import Location, Measurement
from ..techniques.circuits import INPUT, attribution_flow
from ..techniques.edits import what_if_erased, what_if_suppressed
from .circuit_common import circuit_problem, circuit_scores, hidden_nodes, mean_values
from .input_baseline import BaselineParams, input_baseline
from .registry import RuleDefinition, RuleDocs, param, register

DOCS = RuleDocs(
    summary="A large share of the behaviour's attribution flows from a protected input region.",
    what="""
For each declared input mask (a region, or for tabular data a mask over the protected columns), the share
of the behaviour's attribution that flows back to that region through the scored edges of R301 (the output
units' attribution is passed back layer by layer in proportion to the incoming edges' absolute scores).
Fails above `max_share`. The flow is measured on the audit inputs against their mean, never on declared
pairs (pairs that differ only in the region route all of their difference through it by construction). The
pathway lists the units most specific to the region (the largest share of their own attribution coming from
it). Two what-if edits (simulations, no retraining) report accuracy and the region's flip rate before and after:
`what_if_units` mean-ablates the first `edit_nodes` units of the pathway; `what_if_direction` erases the region's
direction at each hidden layer in turn (directional ablation, as in L201's what-if, measured on held-out
samples). `mechaudit edit --suppress` or `--erase` writes such an edit into a copy of the weights.
""",
    why="""
If a protected input (a watermark, an identity marker, a protected column) feeds the output through a
pathway of its own, the model's decisions depend on it; the pathway also shows where to intervene.
""",
    how="""
Attribution flow over the edge-attribution-patching graph (Syed et al. 2023), in the spirit of
information-flow routes (Ferrando and Voita 2024). Threshold, from measurement with the behaviour "logit
of class 7" (`[behaviour] kind = "class_logit", target = "7"`): the watermark (6% of the input) carries 48%
of the flow in the shortcut model `digits` and 22% in its control; on the planted test network a region
holding the circuit's inputs carries 100%, a region of distractor inputs 0%. 0.3 separates them. On
`digits` the watermark is read by convolution channels that also read the digit: mean-ablating the three most
specific units leaves the flip rate at 19.2% (from 18.9%) and lowers accuracy from 80.6% to 74.7%, while
erasing the watermark's direction at `features.0` lowers it to 0.6% on held-out samples at no accuracy cost
without the watermark (`tests/test_recomposition_edits.py`). Error severity in the compliance rulebook.
Baseline: the parameter `baseline` (as in L201; default `zero`) sets what the what-if edits replace the region
by; the evidence names it.
""",
    fix="""
Retrain without the dependency (remove or decorrelate the region), or, as a stopgap documented in the
model card, suppress the pathway's units and re-audit the edited model.
""",
    references=(
        "Syed, Rager, Conmy (2023). Attribution Patching Outperforms Automated Circuit Discovery. arXiv:2310.10348",
        "Ferrando, Voita (2024). Information Flow Routes: Automatically Interpreting Language Models at "
        "Scale. arXiv:2403.00824",
        "Arditi et al. (2024). Refusal in Language Models Is Mediated by a Single Direction. NeurIPS.",
    ),
)
RULE = RuleDefinition("R303", "protected-pathway", "warning", DOCS)


@dataclass(frozen=True)
class ProtectedPathwayParams(BaselineParams):
    samples: int = param(512, low=1, doc="samples (or pairs) the behaviour is measured on")
    max_share: float = param(0.3, low=0.0, high=1.0, doc="fail when a protected region carries more of the flow")
    edit_nodes: int = param(3, low=0, doc="units on the protected pathway suppressed in the what-if edit")


class ProtectedPathwayEvidence(TypedDict, total=False):
    """The evidence of R303's findings (each finding holds some of these keys)."""

    baseline: dict
    pathway: list
    region_area_share: float
    what_if_direction: dict | None
    what_if_units: dict | None


@register("protected_pathway", ProtectedPathwayParams, needs=("layers", "behaviour", "masks", "classification"),
          rule=RULE,
          evidence=ProtectedPathwayEvidence)
def protected_pathway(context: AuditContext, rule) -> list[Measurement]:
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
    baseline = input_baseline(context, params)
    findings = []
    for name, mask in context.data.masks.items():
        region = f"{INPUT}:{name}"
        if region not in flow and region not in scores.node_layer:
            raise ValueError(f"input region '{name}' got no edges: the first audited layer does not read the input")
        share = flow.get(region, 0.0) / inputs_total
        specific = _region_specific_units(scores, flow, hidden, region)
        pathway = sorted(specific, key=lambda n: -specific[n])
        units_edit = what_if_suppressed(context.view, pathway[:params.edit_nodes], mean_values(context),
                                        problem.inputs, problem.labels, mask, context.batch_size, context.device,
                                        remove=baseline.remove)
        direction_edit = what_if_erased(context.view, context.view.hidden_layers, problem.inputs, problem.labels,
                                        mask, context.batch_size, context.device, remove=baseline.remove)
        findings.append(Measurement(
            f"{share:.0%} of the attribution of the {problem.description} flows from '{name}' "
            f"(which covers {float(mask.mean()):.0%} of the input); the units most specific to it: "
            f"{', '.join(pathway[:3]) or 'none'}",
            location=Location(component=region), metric="protected_flow_share", value=share,
            threshold=params.max_share,
            evidence={"region_area_share": float(mask.mean()),
                      "pathway": [{"component": n, "share_from_region": specific[n], "flow": flow[n]}
                                  for n in pathway[:10]],
                      "what_if_units": units_edit, "what_if_direction": direction_edit,
                      "baseline": baseline.describe()},
        ))
    return findings


def _region_specific_units(scores, flow: dict[str, float], hidden: list[str], region: str,
                           min_flow: float = 0.01) -> dict[str, float]:
    """For each unit carrying at least ``min_flow`` of the largest unit flow, the share of its own attribution
    that comes from ``region``: the units most specific to the region come first in its pathway."""
    floor = min_flow * max((flow.get(n, 0.0) for n in hidden), default=0.0)
    return {node: attribution_flow(scores, {node: 1.0}).get(region, 0.0)
            for node in hidden if flow.get(node, 0.0) > floor and floor > 0}
