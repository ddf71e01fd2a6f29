"""R303: how many predictions a protected input region's pathway carries (the prediction flips that go away when
the pathway is cut), how much of the behaviour's attribution flows from the region, and what-if edits.

The gate is causal (:mod:`..techniques.pathway_effect`); the flow share is evidence. The flow is measured on the
audit inputs against their mean, never on the declared pairs: pairs that differ only in the region would route all
of their difference through it by construction. Two what-if edits are reported: mean ablation of the pathway's
units, and directional ablation of the region's trace at each layer (which removes the region's effect where unit
ablation, in a dense layer, cannot)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

from ..context import AuditContext
from ..cost import Cost, RuleCost, Sizes, edge_scores, forwards
from ..findings import Location, Measurement
from ..techniques.circuits import INPUT, attribution_flow, source_shares
from ..techniques.edits import what_if_erased, what_if_suppressed
from ..techniques.pathway_effect import pathway_effect
from .circuit_common import circuit_problem, circuit_scores, hidden_nodes, mean_values
from .input_baseline import BaselineParams, input_baseline
from .registry import RuleDefinition, RuleDocs, param, register

DOCS = RuleDocs(
    summary="A protected input region reaches the model's predictions through a pathway that cutting it removes.",
    what="""
For each declared input mask (a region, or for tabular data a mask over the protected columns): the causal effect
of the region's pathway, `protected_pathway_effect`: among the samples whose input the region's removal changes
(the *exposed* samples: with the zero baseline on a binary column, those whose value is 1; on an image patch, those
whose patch is not already black), the share whose prediction flips when the region is removed (set to the
`baseline`) and no longer flips when the region's pathway is cut, its direction erased at one hidden layer
(directional ablation, as in L201's what-if), at the layer where the cut takes away the most flips. The direction
is estimated on one half of the samples and the effect measured on the other, both ways (cross-fitted). Fails
above `max_effect`; the value carries a 95% percentile-bootstrap interval over the samples (the layer chosen anew
in each resample). A sample is exposed when an element of its input moves by more than 1e-5 (relative and
absolute) on removal, so a baseline's rounding noise is no exposure; with fewer than `min_exposed` exposed samples
(default 20) the effect is reported but not judged ("too few exposed samples"): one carried flip among 3 exposed
would read 0.33. At 20, a single carried flip is 0.05, under `max_effect`, so a fail takes at least two. The
evidence also gives, per layer, the share of *all* samples carried (`carried_share_of_all`,
the former gate, which scales with how common the exposed group is) and of the flips (`carried_share_of_flips`),
and the exposed share. Evidence: the share of the behaviour's attribution that flows back to the region through
the scored edges of R301 (`protected_flow_share`: the output units' attribution is passed back layer by layer in
proportion to the incoming edges' absolute scores; measured on the audit inputs against their mean, never on
declared pairs, which route all of their difference through the region by construction), the effect per layer,
and the pathway: the units most specific to the region (the largest share of their own attribution coming from
it). Two what-if edits (simulations, no retraining) report accuracy and the region's flip rate before and after:
`what_if_units` mean-ablates the first `edit_nodes` units of the pathway; `what_if_direction` erases the region's
direction at each hidden layer in turn (measured on held-out samples). `mechaudit edit --suppress` or `--erase`
writes such an edit into a copy of the weights.
A pathway unit's address (`features.0:ch7`) is a node of R301's graph: its flow passes through the edges that
patch what the next audited layer reads from it (after its nonlinearity); `what_if_units` mean-ablates the
layer's own output (before the nonlinearity).
""",
    why="""
If a protected input (a watermark, an identity marker, a protected column) feeds the output through a
pathway of its own, the model's decisions depend on it; the pathway also shows where to intervene.
""",
    how="""
The gate is an intervention, not an attribution: the flow share measures where attribution goes, not whether the
decision moves, and it was not calibrated to the effect (a label that leaks a protected column so that replacing it
flips 36% of predictions drew 0.21 of the flow, under the former 0.3 limit, and controls without a leak drew 0.14
to 0.24). Cutting at a layer that every path crosses removes the pathway's linear part; a flip that the same cut
causes with and without the region (collateral) does not count. The effect is a share of the exposed samples, not
of all samples: the share of all samples, gated before, measured how common the exposed group is as much as how
strong the pathway is (the same model, leak 0.5, training seed 0, on 600 rows of which 50% or 20% have sex = 1:
0.057 and 0.023 of all rows, the second under the former limit of 0.03; of the exposed rows 0.111 and 0.117,
beside true flip rates among them of 0.110 and 0.125). The share of the flips is no measure of strength either:
the pathway carries every flip (1.000) in every model of the sweep, leak or control. Threshold, from a planted
sweep (`python benchmarks/bias_calibration.py`; `tests/test_protected_leak.py`): the tabular toy (six features and
a binary `sex` column; the label is x0 + x1 - x2/2 plus `strength` x (sex - 1/2), noise 0.3; an MLP 7-16-16-2
trained on 2000 samples with a training seed), audited on 600 held-out rows of which 50% or 20% have sex = 1, with
the decision (logit 1 minus logit 0) as the behaviour, the mask over the `sex` column and the zero baseline, so
that only the rows with sex = 1 are exposed. Effect by leak strength (training seeds; 95% intervals): 0, 50%
exposed (seeds 0 to 5): 0.011 to 0.038 (upper bounds at most 0.063); 20% (seeds 0 to 3): 0.010 to 0.039 (at most
0.080), true flip rates among the exposed 0.008 to 0.037 (a control network still reads the column a little);
0.25: 0.054 (50%) and 0.058 (20%), true 0.050 and 0.058; 0.5, 50% (seeds 0 to 3): 0.107 to 0.126 (lower bounds at
least 0.071); 20% (seeds 0, 1): 0.117 and 0.117 (at least 0.060); 1: 0.291 and 0.291; 1.5: 0.352 and 0.340. The
effect follows the true flip rate among the exposed within 0.01 at both prevalences. `max_effect = 0.06` lies
between the controls (at most 0.039) and the leak that flips 11% of the exposed predictions (at least 0.107), at
either prevalence; the former limit of 0.03 on the share of all rows corresponds to it at 50% exposed.
On the embedded examples with the behaviour "logit of class 7" (77% of the audit images exposed: the others'
patch is already black): `digits` 0.237 (0.188 to 0.297; 0.183 of all images; 48% of the
flow), `digits-control` 0.014 (0 to 0.032; 22% of the flow, which the former share gate failed in the compliance
rulebook). On the planted test network a region holding the circuit's inputs gives 0.88
(flow 100%), a region of distractor inputs 0.00. On `digits` the watermark is read by convolution channels that
also read the digit: mean-ablating the three most specific units leaves the flip rate at 19.2% (from 18.9%) and
lowers accuracy from 80.6% to 74.7%, while erasing the watermark's direction at `features.0` lowers it to 0.6% on
held-out samples at no accuracy cost without the watermark (`tests/test_recomposition_edits.py`). Attribution
flow over the edge-attribution-patching graph (Syed et al. 2023), in the spirit of information-flow routes
(Ferrando and Voita 2024); directional ablation (Arditi et al. 2024). Error severity in the compliance rulebook.
Baseline: the parameter `baseline` (as in L201; default `zero`) sets what the region is replaced by in the effect
and the what-if edits; the evidence names it.
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
    max_effect: float = param(0.06, low=0.0, high=1.0, doc="fail when the region's pathway carries a larger share "
                                                           "of the predictions its removal changes the input of "
                                                           "(flips that go away when it is cut)")
    edit_nodes: int = param(3, low=0, doc="units on the protected pathway suppressed in the what-if edit")
    min_exposed: int = param(20, low=1, doc="fewer exposed samples (whose input the region's removal changes) "
                                            "and the effect is reported, not judged")


class ProtectedPathwayEvidence(TypedDict, total=False):
    """The evidence of R303's findings (each finding holds some of these keys)."""

    baseline: dict
    pathway: list
    pathway_effect: dict | None
    protected_flow_share: float
    region_area_share: float
    what_if_direction: dict | None
    what_if_units: dict | None


def _cost(sizes: Sizes, params: ProtectedPathwayParams) -> Cost:
    """The edge scores against the mean activations (shared with R301 only without pairs), the behaviour's
    predictions, then per region, in passes over the samples (with labels; half a pass on a held-out half):
    the units' what-if (accuracy with and without the region, and its flips, before and after: 8), the
    direction's what-if (the held-out half before: 2; per hidden layer the direction on the other half and the
    held-out half after: 3) and the pathway effect (flips on both halves: 2; per hidden layer both halves'
    directions and flips: 4)."""
    n = sizes.n(params.samples)
    per_region = 12 + 7 * len(sizes.hidden)
    return edge_scores(sizes, n, paired=False) + forwards(sizes, n, 1 + max(1, sizes.regions) * per_region)


COST = RuleCost(_cost, reduce="samples")


@register("protected_pathway", ProtectedPathwayParams,
          needs=("layers", "behaviour", "masks", "classification", "real_inputs"), rule=RULE,
          evidence=ProtectedPathwayEvidence, cost=COST)
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
        effect = pathway_effect(context.view, context.view.hidden_layers, problem.inputs, mask, context.batch_size,
                                context.device, remove=baseline.remove)
        value = effect.value if effect is not None else 0.0
        judged = effect is None or effect.exposed >= params.min_exposed
        if effect is None:
            carried = f"removing '{name}' changes no audited layer: it has no pathway to the decision"
        else:
            exposed = effect.exposed / max(len(effect.flipped_before), 1)
            carried = (f"cutting the pathway of '{name}' at {effect.layers[effect.best]} stops {value:.1%} of the "
                       f"predictions that its removal could flip from flipping ({exposed:.0%} of the samples change "
                       f"when it is removed; {effect.flipped_before.mean():.1%} of all flip without the cut, "
                       f"{effect.per_layer_of_all[effect.best]:.1%} of all are carried)")
            if not judged:
                carried = (f"not judged: too few exposed samples ({effect.exposed} of {len(effect.flipped_before)} "
                           f"change when '{name}' is removed, fewer than min_exposed = {params.min_exposed}); "
                           + carried)
        findings.append(Measurement(
            f"{carried}; {share:.0%} of the attribution of the {problem.description} flows from it (it covers "
            f"{float(mask.mean()):.0%} of the input); the units most specific to it: "
            f"{', '.join(pathway[:3]) or 'none'}",
            location=Location(component=region), metric="protected_pathway_effect", value=value,
            threshold=params.max_effect if judged else None, judged=judged,
            interval=effect.interval(context.seed) if effect is not None else None,
            evidence={"region_area_share": float(mask.mean()), "protected_flow_share": share,
                      "pathway_effect": effect.to_dict() if effect is not None else None,
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
    shares = source_shares(scores, region)
    return {node: shares.get(node, 0.0) for node in hidden if flow.get(node, 0.0) > floor and floor > 0}
