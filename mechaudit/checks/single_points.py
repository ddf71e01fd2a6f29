"""R304: single points of failure in the circuit, and the backups that compensate when a unit is removed."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TypedDict

import torch

from .. import deadline
from ..context import AuditContext
from ..cost import Cost, RuleCost, Sizes, checked_exactly, circuit_references, edge_scores, forwards, with_gradients
from ..findings import Location, Measurement
from ..techniques import atp
from ..techniques.node_ablation import behaviour_under_ablation, distance
from ..techniques.path_attribution import mean_toward, path_estimates
from ..techniques.uncertainty import Interval, bootstrap_ratio_of_mean_distances
from .circuit_common import (
    MLP_NEURON_SITE,
    ablation_sites,
    absent_in,
    carries_behaviour,
    circuit_problem,
    circuit_scores,
    hidden_nodes,
    mean_values,
    not_carried,
    references,
)
from .registry import RuleDefinition, RuleDocs, param, register
from .screen_confirm import confirm_selection
from .screen_params import calibration_param, exhaustive_param
from .screen_steps import screen_steps_param

DOCS = RuleDocs(
    summary="One unit alone carries most of the behaviour; some units are backups for others.",
    what="""
For the `candidates` circuit units with the largest losses (see how it is measured), the share of the
behaviour lost when each is ablated alone, (m(M) - m(M without u)) / (m(M) - m(empty)); a unit losing more than
`max_single_loss` is a single point of failure. For each pair (a, b), b is a backup of a when b's effect rises by
more than `min_compensation` once a is ablated (its effect measured with a already removed).
With pairs, the behaviour must first be present: its clean-minus-corrupted gap must exceed 3 standard errors of
the paired differences; otherwise one `behaviour_absent` finding (a fail) names the gap and its noise, and no
loss is computed (`induction-control`). Each loss carries a 95% bootstrap interval over the samples.
A unit's address (`fc1:u7`) names the tensor R301's node scores patch: what the next audited layer reads from
the unit (after its nonlinearity, pooling, flattening), wherever that layer's input splits by unit and is the
unit's only path to the output (checked numerically on one batch), else the layer's own output (before its
nonlinearity; a head's part of the output projection's input; residual streams; a skip connection in between
or past the next layer).
""" + MLP_NEURON_SITE + """\
On a small GPT-2 and BERT
(random weights, four planted neurons) each listed neuron's loss equals that exact per-token post-GELU mean
ablation to 1e-6; ablating before the GELU differed by up to 0.012 and 0.091 (`tests/test_mlp_neuron_split.py`);
with both blocks' `c_fc` audited and no `c_proj`, too (the pre-GELU site gave `h.0.mlp.c_fc:u3` 0.807, exact 0.781).
On the MiniLM example this moved R302's faithfulness from 0.067 to 0.105; R304's screen at this site, once it
joined the split input back by token (it had mixed tokens and units), went from Spearman 0.66 [0.36, 0.83] to 0.97
[0.89, 1.00] over the units the audit checks, top-10 recall 0.9 to 1.0.
The ablation replaces it by its mean over
the audit data there, and the screen below ranks units by node scores on the same tensor. (L202 and
`mechaudit edit --suppress` write the layer's own output everywhere.)
""",
    why="""
A behaviour that hangs on one unit breaks under a small perturbation of that unit; backups mean that
ablating one component underestimates its role, so single-unit ablation results (L202) must be read with
them.
""",
    how="""
Mean ablation of single units and pairs (Wang et al. 2022 describe such backup name-mover heads; McGrath
et al. 2023 the self-repair that hides them). Losses are per-sample distances normalised as in R302.
Measured: on the planted test network the three circuit units are flagged (the shared downstream unit
loses 100%, each of the two parallel units that read different inputs 78%), the distractors 0%; with the
signal spread over 8 identical units no unit loses more than 12.5%; on `digits` (logit of class 7) the
largest single loss is 48% (shortcut) and 41% (control), as its spec declares it (edges scored on its
stamped-versus-unstamped pairs); each of the 56 units' losses equals that of the exact post-ReLU mean ablation
done by hand to 1e-7 (ablating the Linear/Conv output before its ReLU, they differed by up to 0.06 and 0.10),
and on modular addition (`benchmarks/ground_truth/`) to 1e-8 (before: 0.08). A unit off far below its kink on
90% of the samples and strongly on for the rest loses 0.74 (flagged) where ablating its pre-activation wrote 0
and lost 0.43 (`tests/test_ablation_site.py`). 0.5 flags a unit that carries most of it alone.
Screen, then confirm (AtP*, Kramar et al. 2024): with at most 256 circuit units (every embedded example) or
`exhaustive = true`, every unit is ablated alone exactly and the `candidates` with the largest exact losses are
examined (and paired); with more, a screen of the very intervention confirmed ranks them: per sample the
first-order change of the behaviour when the unit alone is mean-ablated, (mean - a) . dm/da, at the tensor and with
the mean the exact ablation writes, averaged in absolute value over the samples as the loss is; the gradient
averaged over `screen_steps` points of the straight path from the intact activations to the means (every unit
moved at once, EAP-IG; one point: the intact model's gradient), one forward and backward pass per point and batch.
Only the top `candidates` and a seeded random `calibration` sample of the others are ablated alone. The `screen`
evidence gives the units scored and ablated exactly, Spearman of screen and exact loss over them with a 95%
bootstrap interval over the units, the recall of the exact top by the screen's, and the largest loss in the
calibration sample with a one-sided 95% Clopper-Pearson bound on how many unchecked units lose more than
`max_single_loss`. Measured (`benchmarks/screen_steps.py`, Spearman over a seeded random sample of 48 units with
its 95% bootstrap interval; top-10 recall among all units ablated exactly): MiniLM (10,056 units) 0.994
[0.98, 1.00], recall 0.7, where the former screen (the circuit rules' signed node scores against the corrupted
inputs: another intervention, summed over the samples) gave 0.835 [0.69, 0.92], recall 0.6; `digits` (all 56 units)
0.998 against 0.885, recall 1.0 against 0.5; a 2-block, 64-wide GPT-2 (520 units) 0.995 against 0.956, recall 1.0
against 0.3; `induction` 1.0 both. More points did not help (MiniLM 0.87 / 0.93 at 2 / 5 points, the others alike or
lower, each point one more pass): `screen_steps = 1`. Screened, backups are looked for among the top
`screened_pairs` candidates only (`pairs_among` in the `screen` evidence): 3 pair ablations instead of 45 at the
default sizes, each a forward pass over the samples (issue 16: a GPT-2-small audit within 15 minutes).
Time budget: screened, the units are ablated alone in order, the screen's top `candidates` first, then the
calibration sample in a seeded random order, and then the pairs, in chunks that stop before the rule's time-out would
be reached (`mechaudit/deadline.py`: 15% of the budget is kept for the intervals), so that a loaded machine gives a
reduced result instead of an `error`. A cut finding says how many of the planned ablations ran (`time_budget_cut`);
the agreement figures and the calibration bound come from the units that ran (`screen.checked_exactly`,
`screen.calibration`); a top candidate left out keeps the screen's prediction, its first-order loss over the same
span (`screen.unchecked_candidates`, `predicted_loss`): one predicted over `max_single_loss` fails
(`predicted_behaviour_lost`), and since no ablation measured it, its interval is every loss and the verdict reads
uncertain. Raise `--rule-timeout` (0: none) to ablate them all.
""",
    fix="""
Add redundancy where a single point of failure is unwanted (dropout, wider layers); read ablation-based
findings together with the backups listed.
""",
    references=(
        "Wang et al. (2022). Interpretability in the Wild. arXiv:2211.00593",
        "McGrath et al. (2023). The Hydra Effect: Emergent Self-repair in Language Model Computations. "
        "arXiv:2307.15771",
        "Kramar, Lieberum, Shah, Nanda (2024). AtP*: An efficient and scalable method for localizing LLM behaviour "
        "to components. arXiv:2403.00745",
    ),
)
RULE = RuleDefinition("R304", "single-points-of-failure", "warning", DOCS)


@dataclass(frozen=True)
class SinglePointsParams:
    samples: int = param(512, low=1, doc="samples (or pairs) the behaviour is measured on")
    candidates: int = param(10, low=1, doc="top circuit units examined (and paired: k(k-1)/2 pairs)")
    max_single_loss: float = param(0.5, low=0.0, high=1.0, doc="fail a unit whose removal alone loses more")
    min_compensation: float = param(0.1, low=0.0, high=1.0, doc="report a backup whose effect rises by more")
    exhaustive: bool = exhaustive_param("ablated alone")
    calibration: int = calibration_param("ablated alone")
    screen_steps: int = screen_steps_param(1, "one: the gradient of the intact model (plain attribution "
                                              "patching); two: also of every unit mean-ablated at once")
    screened_pairs: int = param(3, low=0, doc="screened: backups are looked for among only this many top "
                                              "candidates (k(k-1)/2 pair ablations, each read both ways)")


class SinglePointsEvidence(TypedDict, total=False):
    """The evidence of R304's findings (each finding holds some of these keys)."""

    backups: list
    behaviour_change_when_all_ablated: float
    carried: bool
    gap_against: str
    presence: dict
    screen: dict
    units: list


def _cost(sizes: Sizes, params: SinglePointsParams) -> Cost:
    """The shared edge scores and references, then one forward pass per unit ablated alone (every circuit unit
    up to the screen's threshold, else the top candidates and a calibration sample) and per pair of candidates."""
    n = sizes.n(params.samples)
    k = params.candidates
    alone = checked_exactly(sizes.hidden_units, params.exhaustive, k, params.calibration)
    k = min(k, alone)  # the pairs are among the checked units' top ones
    screened = sizes.hidden_units > atp.SCREEN_ABOVE and not params.exhaustive  # as the rule decides
    if screened:  # pairs among fewer top candidates
        k = min(k, params.screened_pairs)
    # the screen holds ~4 batch copies: the input, the activations kept for autograd, the moved sites and gradients
    screen = with_gradients(sizes, n, params.screen_steps, copies=4) if screened else Cost()
    return (edge_scores(sizes, n) + circuit_references(sizes, n) + screen
            + forwards(sizes, n, alone + k * (k - 1) / 2))


COST = RuleCost(_cost, reduce="samples")


@register("single_points", SinglePointsParams, needs=("layers", "behaviour", "logits"), rule=RULE,
          evidence=SinglePointsEvidence, cost=COST)
def single_points(context: AuditContext, rule) -> list[Measurement]:
    params: SinglePointsParams = rule.params
    problem = circuit_problem(context, params.samples)
    values, sites = mean_values(context), ablation_sites(context, params.samples)
    nodes = hidden_nodes(context)
    screened = len(nodes) > atp.SCREEN_ABOVE and not params.exhaustive
    attribution = (ablation_screen(context, problem, values, sites, params.screen_steps) if screened
                   else _edge_node_scores(context, params.samples, nodes))
    selection = (atp.select(attribution, params.candidates, params.calibration, context.seed) if screened
                 else atp.everything(len(nodes)))

    shared = references(context, params.samples)
    m_model, m_empty, found = shared.intact, shared.all_ablated, shared.presence
    measured = {frozenset(): m_model, frozenset(nodes): m_empty}  # a pair ablated in either order: one pass

    def m(ablate: tuple[str, ...]) -> torch.Tensor:
        key = frozenset(ablate)
        if key not in measured:
            measured[key] = behaviour_under_ablation(context.view, problem.inputs, problem.targets,
                                                     problem.behaviour, list(ablate), values, context.batch_size,
                                                     context.device, sites)
        return measured[key]

    if found is not None and not found.present:
        return [absent_in(found, problem)]
    span = distance(m_empty, m_model)
    if not carries_behaviour(span, m_model):
        return [not_carried(rule, problem, span, "behaviour_lost", params.max_single_loss)]
    planned = selection
    if screened:  # confirmed the screen's top first, while the rule's time budget allows (mechaudit.deadline)
        selection = confirm_selection(selection, lambda chunk: [m((nodes[i],)) for i in chunk],
                                      "single-unit ablations", context.seed)
    checked = [nodes[i] for i in selection.checked]
    alone = {n: m((n,)) for n in checked}
    unchecked = [{"component": nodes[i], "predicted_loss": float(attribution[i]) / span}
                 for i in planned.top if i not in selection.checked]

    def lost_interval(node: str):
        return bootstrap_ratio_of_mean_distances((alone[node], m_model), (m_empty, m_model), seed=context.seed)
    loss = {n: distance(alone[n], m_model) / span for n in checked}
    screen = _screen_evidence(selection, attribution, loss, nodes, screened, params)
    top = sorted(checked, key=lambda n: -loss[n])[:params.candidates]
    backups = []
    paired = top[:params.screened_pairs] if screened else top
    if screened:
        screen["pairs_among"] = len(paired)
    pairs = list(itertools.combinations(paired, 2))  # one pass a pair, read both ways
    if screened:
        pairs = deadline.confirm(pairs, lambda chunk: [m(pair) for pair in chunk], "pair ablations")
    for first, second in (ordered for pair in pairs for ordered in (pair, pair[::-1])):
        effect_alone = loss[second]
        effect_without_first = distance(m((first, second)), alone[first]) / span
        if effect_without_first - effect_alone > params.min_compensation:
            backups.append({"removed": first, "backup": second, "effect_alone": effect_alone,
                            "effect_when_removed": effect_without_first})
    table = [{"component": n, "behaviour_lost": loss[n]} for n in top]
    failing = sorted((n for n in checked if loss[n] > params.max_single_loss), key=lambda n: -loss[n])
    if unchecked:
        screen["unchecked_candidates"] = unchecked
        predicted = _predicted(unchecked, params, problem.description, table, backups, screen, not top)
        if predicted is not None:
            return [predicted] if not top else [predicted, *_measured(failing, loss, top, table, backups, screen,
                                                                      lost_interval, params, problem, unchecked)]
    return _measured(failing, loss, top, table, backups, screen, lost_interval, params, problem, unchecked)


def _measured(failing: list[str], loss: dict[str, float], top: list[str], table: list[dict], backups: list[dict],
              screen: dict, lost_interval, params: SinglePointsParams, problem,
              unchecked: list[dict]) -> list[Measurement]:
    """The findings of the units ablated alone: each one over ``max_single_loss``, or one pass. With top
    candidates left ``unchecked`` (the time budget), the pass speaks of the units ablated only and is uncertain: its
    interval runs from the measured one's low end to a loss of 1, since an unchecked candidate may lose more."""
    findings = [Measurement(
        f"removing {n} alone loses {loss[n]:.0%} of the {problem.description}",
        location=Location.of_address(n), metric="behaviour_lost", value=loss[n],
        threshold=params.max_single_loss, interval=lost_interval(n),
        evidence={"units": table, "backups": [b for b in backups if b["removed"] == n], "screen": screen},
    ) for n in failing]
    if not failing:
        worst = max(top, key=lambda n: loss[n])
        interval = lost_interval(worst)
        of = ""
        if unchecked:
            of = f" of the {len(loss)} ablated exactly"
            interval = Interval(interval.low if interval else loss[worst], 1.0, "unmeasured above: "
                                f"{len(unchecked)} top candidate(s) were not ablated exactly", level=1.0)
        findings.append(Measurement(
            f"no single unit{of} carries the {problem.description} alone (largest loss {loss[worst]:.0%}, {worst}); "
            f"{len(backups)} backup relation(s) found",
            metric="behaviour_lost", value=loss[worst], threshold=params.max_single_loss,
            interval=interval,
            evidence={"units": table, "backups": backups, "screen": screen},
        ))
    return findings


def _predicted(unchecked: list[dict], params: SinglePointsParams, description: str, table: list[dict],
               backups: list[dict], screen: dict, nothing_checked: bool) -> Measurement | None:
    """For the screen's top candidates the time budget left unablated, their predicted loss stands: a failing
    finding when one exceeds ``max_single_loss``, a pass when no unit was ablated at all; either reads uncertain (its
    interval is every loss: a prediction, not a measurement). None when some units were measured and no unchecked
    one is predicted over the threshold."""
    worst = max(unchecked, key=lambda row: row["predicted_loss"])
    if worst["predicted_loss"] <= params.max_single_loss and not nothing_checked:
        return None
    over = worst["predicted_loss"] > params.max_single_loss
    return Measurement(
        f"the screen predicts that removing {worst['component']} alone loses {worst['predicted_loss']:.0%} of the "
        f"{description}, and it was not ablated exactly (the time budget ran out first)"
        + ("" if over else ": a prediction, not a measurement"),
        location=Location.of_address(worst["component"]) if over else None, metric="predicted_behaviour_lost",
        value=worst["predicted_loss"], threshold=params.max_single_loss,
        interval=Interval(0.0, max(1.0, worst["predicted_loss"]), "unmeasured: the screen predicts this loss, no "
                          "exact ablation measured it", level=1.0),
        evidence={"units": table, "backups": backups, "screen": screen})


def _screen_evidence(selection: atp.Selection, attribution: torch.Tensor, loss: dict[str, float], nodes: list[str],
                     screened: bool, params: SinglePointsParams) -> dict:
    """How the units ablated alone were chosen, and how the attribution ranking agrees with their exact losses."""
    exact = {i: loss[nodes[i]] for i in selection.checked}
    if screened:
        method = (f"attribution (AtP*): mean over the samples of |(mean - a) . dm/da|, the first-order change of "
                  f"the behaviour when the unit alone is mean-ablated where it is ablated exactly, gradient "
                  f"averaged over {params.screen_steps} point(s) of the straight path to the mean")
        return atp.report(selection, attribution, exact, nodes, method, threshold=params.max_single_loss).to_evidence()
    why = "exhaustive = true" if params.exhaustive else f"at most {atp.SCREEN_ABOVE} units"
    return {"method": f"exact ablation of every circuit unit alone ({why})", "scored": len(nodes),
            "checked_exactly": len(nodes), "calibration": 0,
            "spearman": atp.report(selection, attribution, exact, nodes, "").spearman}


def ablation_screen(context: AuditContext, problem, values: dict[str, torch.Tensor], sites: dict,
                    steps: int) -> torch.Tensor:
    """Per hidden unit (in :func:`hidden_nodes` order), the screen of its exact loss: the mean over the samples of
    the absolute first-order change of the behaviour when it alone is mean-ablated, at the tensor and with the
    values the exact ablation writes (:func:`ablation_sites`, :func:`mean_values`); the exact loss is the mean
    absolute per-sample change too (normalised by the same span, which does not change the ranking)."""
    layers = context.view.hidden_layers
    estimates = path_estimates(context.view, layers, problem.inputs, problem.targets, problem.behaviour, steps,
                               toward=mean_toward(values, sites), sites=sites, batch_size=context.batch_size,
                               device=context.device)
    return torch.cat([estimates[layer.name].abs().mean(1) for layer in layers])


def _edge_node_scores(context: AuditContext, samples: int, nodes: list[str]) -> torch.Tensor:
    """|node score| of the circuit rules' shared edge attribution, read beside the exact losses when every unit is
    ablated exactly (its Spearman in the evidence)."""
    scores = circuit_scores(context, samples)
    return torch.tensor([abs(scores.nodes.get(n, 0.0)) for n in nodes])
