"""L207: activation patching over components, on counterfactual pairs.

The metric is the declared ``[behaviour]`` when there is one (as for the circuit rules); otherwise, for a
classifier, ``metric``: the logit difference between the class predicted on the clean input and the class
predicted on the corrupted one (its runner-up where both agree), or the logit of ``target``. Attribution patching
scores every unit of every audited layer at once; exact patching verifies the ``top_k``, and the finding reports
the components that carry the behaviour by their exact recovered fractions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TypedDict

import torch

from ..activations import model_outputs
from ..context import AuditContext
from ..cost import Cost, RuleCost, Sizes, checked_exactly, forwards, unit_split_check, with_gradients
from ..findings import Location, Measurement
from ..techniques import atp, graddrop, resampled, second_order
from ..techniques.ablation_scan import AblationScanner
from ..techniques.circuits import Behaviour, logit_difference, target_logit
from ..techniques.patching import PatchingTotals, attribution_patching, exact_patching, metric_totals
from ..techniques.uncertainty import Interval, behaviour_presence, bootstrap
from .circuit_common import behaviour_absent, circuit_problem, class_index
from .decomposition_evidence import unit_pictures
from .registry import RuleDefinition, RuleDocs, param, register
from .screen_confirm import confirm_selection
from .screen_params import calibration_param, exhaustive_param, graddrop_param
from .screen_steps import screen_steps_param
from .token_evidence import token_attribution

DOCS = RuleDocs(
    summary="Which components carry the behaviour that separates the clean from the corrupted input of each pair.",
    what="""
For the counterfactual pairs (`[data.pairs]`, the first `samples`) and a metric, each unit of each hidden layer
(channel, attention head) is patched: its activation on the clean input is written into the corrupted run, and the
fraction of the metric it recovers is (sum of patched - sum of corrupted) / (sum of clean - sum of corrupted). The
metric is the declared `[behaviour]` when there is one, else `metric`: the logit difference between the class
predicted on the clean input and the one predicted on the corrupted input (its runner-up where both agree), or the
logit of `target`. Attribution patching scores every component at once; exact patching measures every component
(at most 256 of them) or the screen's `top_k` and a calibration sample (more), and the evidence lists the `top_k`
exact fractions with the estimates and their rank correlation; components recovering at least `min_recovered`
carry the behaviour. When the pair changes the metric by less than `min_effect` of its clean
size, there is nothing to localise. This rule describes; it does not judge.
Before any fraction, the behaviour must be present: the mean over pairs of the metric on the clean minus on the
corrupted input must exceed 3 standard errors of those paired differences (`mechaudit.techniques.uncertainty.
behaviour_presence`); otherwise one finding, `behaviour_absent` (a fail), names the gap and its noise and no
fraction is computed: a ratio of noise over noise (a model that never learned the behaviour "recovering 260%"
of it) says nothing. `induction-control` (gap exactly 0) and pairs that differ by symmetric noise give it.
""",
    why="""
Attributions say which inputs matter; patching says which internal components carry the difference between two
inputs that should (or should not) be treated differently: where a shortcut is computed, which a fix must target
and which the circuit rules (R3xx) should contain.
""",
    how="""
Activation patching (Vig et al. 2020; Meng et al. 2022) and attribution patching, its first-order estimate from two
forward passes and one backward pass (Nanda 2023; Syed, Rager, Conmy 2023); exact patching runs on the fast
ablation scan of L202 (patching is resample ablation of the corrupted inputs with the clean ones as source).
Measured (`benchmarks/patching_speed.py`, all components): rank correlation of attribution and exact patching
0.94 on `digits` (56 units, 360 pairs: each test image with and without the watermark) and 1.00 on `induction`
(8 heads); on `digits` the watermark moves the logit difference by 61% of its clean size and `features.0:ch7`
alone recovers 39% of it, 8 components at least 10%; on `digits-control` the watermark moves it by 3.6%, and on
`induction-control` patching changes nothing: `min_effect = 0.1` separates those. In the tests, the unit a toy's
pairs differ through recovers 100%.
Screen, then confirm (AtP*, Kramar et al. 2024): with at most 256 components (every embedded example) or
`exhaustive = true`, every component is patched exactly and the listed ones are the exact top `top_k`; with
more, attribution patching scores all of them and only its `top_k` plus a seeded random `calibration` sample of
the others are patched exactly. The `screen` evidence gives the components scored and checked exactly, the
calibration size, Spearman of estimate and exact fraction over the checked ones, the recall of their exact top-k
by the screen's, and the largest exact fraction in the calibration sample with a one-sided 95% Clopper-Pearson
bound on how many unchecked components recover at least `min_recovered`, and a 95% bootstrap interval of that
Spearman over the checked components. The gradient is averaged over `screen_steps` points from the corrupted to the
clean activations (EAP-IG, Hanna et al. 2024: every component moved at once; the ends are the corrupted and the
clean run, the interior points the corrupted run with the components alone interpolated, so not one straight path
where a residual stream or the embeddings reach the output past them; one point the corrupted run alone, blind to a
unit the clean input switches on from below a ReLU's kink), a forward and backward pass per point and batch.
Measured (`benchmarks/screen_steps.py`, Spearman over every component or a seeded random sample of 48, with its 95%
bootstrap interval; top-10 recall among those patched exactly) for 1 / 2 / 3 / 5 / 10 points: `digits` 0.95 / 0.986
/ 0.996 [0.99, 1.00] / 0.996 / 0.995, recall 0.8 / 0.9 / 1.0 / 1.0 / 1.0; a 2-block, 64-wide GPT-2 (520 components)
0.98 / 0.91 / 0.97 [0.93, 0.98] / 0.986 / 0.992, recall 0.8 / 0.8 / 0.9 / 0.9 / 0.9; the first 4 blocks of the
GPT-2-small shape (12,336 components, 64 prompts of 16 tokens, a sample of 32) 0.86 / 0.977 / 0.989 [0.96, 1.00] /
0.984, recall 0.8 / 1.0 / 0.9 / 0.9 (a point 8-12 s); `induction` 1.0 at every count; the screen's time 1 / 1.2 /
1.5-2.0 / 2.4-3.5 / 4.7-6.7 times one point's: `screen_steps = 3`.
`screen_graddrop` adds AtP*'s cancellation fix (GradDrop, `mechaudit.techniques.graddrop`, where it is explained and
measured) to the first-order screen: the path screen itself (same steps, same end runs) rerun once per audited block
after the first layer with that block's write detached, and a component ranked by the mean of those estimates (each
at least 0) where that exceeds the path screen's; `screen_steps` passes per block and batch, as the time budget
allows; `auto` (default) runs it when at most 4 blocks follow the first layer; a stationary metric (second-order
screen) does not use it. On a random 2-layer GPT-2 it costs a little agreement (Spearman 0.977 to 0.965).
A metric stationary on the corrupted run gets a second-order screen instead (`mechaudit.techniques.second_order`):
MiniLM's similarity behaviour, the cosine similarity of each prompt's output to its paraphrase's, is exactly 1 (its
maximum) on the paraphrase run patched into, so every first-order term is 0 and a patch of one component lowers it
by a second-order amount, which no first-order screen ranks (integrating along the joint path measures each
component's interaction with all others). The screen is used where the first-order prediction of each pair's whole
patch, `|g . (y_clean - y_corrupted)|` summed over the pairs (`g` the metric's gradient in the output, from the
forward passes the rule runs anyway; per pair, so that pairs of opposite signs cannot cancel into a small share), is
below 1% of the metric's exact change, `|m(clean) - m(corrupted)|` summed over the pairs
(`screen.first_order_share`, rounded to 6 decimals in findings.json like every value, so MiniLM's reads 0.0 there;
the screen's `method` states it to two digits: MiniLM 8.5e-8; a logit difference or label logit is not stationary:
`induction` 1). It estimates each component's own effect by the Taylor expansion at the corrupted run, `g . J d +
1/2 (J d)^T H (J d)` (`H` the metric's Hessian in the output, `J d` the output's first-order change), the quadratic
term from 4 random output directions (Hutchinson; per batch a forward pass kept for autograd, a backward pass
through the model for `g` and two per direction, and the metric's own gradient and Hessian-vector products in the
output). A layer whose units reach the output only through a module that reads them unit by unit after their own
nonlinearity (MiniLM's `intermediate.dense`, read by `output.dense` after the GELU) is moved at that module's input
(`mechaudit.techniques.second_order.patch_sites`, the readers the circuit rules use; the `method` says how many
layers), so that `d` is the exact change after the GELU: at the neuron's output the expansion takes the GELU's slope
on the corrupted run alone and misranks the neurons a patch moves across its bend (Spearman over a random 160
components, 148 of them neurons: 0.685 at the outputs with 4 probes, 0.689 with 64, 0.993 at the readers' inputs;
`python benchmarks/minilm_patching.py --screens`; finding and checking the readers, on a seeded random 16 pairs:
about 15 forward passes of those, 1.2 s CPU on MiniLM, charged in the plan). The path screen's `top_k` are patched
exactly too (`screen.path_screen_checked`): it ranked a GELU neuron the patch switches on (`encoder.layer.0.
intermediate.dense:u691`, 5.7%) 1st where the expansion at the neuron's output ranked it 2,583rd (both in
`screen_steps.py`, below); `minilm_patching.py --screens` ranks it 1,892nd at its output, 15th at its reader's
input. Measured
on MiniLM (10,056 components; `python benchmarks/screen_steps.py --models minilm --rules L207 --steps 1,3`: a seeded
random 48 and every screen's top 30 patched exactly, 228 components), path screen with 1 / 3 points, second order,
second order with the Jacobian averaged over both runs (every unit at its output): Spearman over the random 48 0.22
/ 0.10 [-0.21, 0.38] / 0.51 [0.25, 0.70] / 0.86 [0.73, 0.92]; recall of the exact top 10 of the 228 by the screen's
top 10 0.1 / 0.5 / 0.6 / 0.4 (the 5th to 12th exact effects lie within 5.7-6.6% of the behaviour); and what decides
the finding, the carriers (at least `min_recovered`; 4 among the 228: 27%, 18%, 13%, 11%), ranked 10055, 148, 220,
10027 / 1, 6, 23, 4 / 0, 1, 3, 5 / 5, 2, 27, 11: the
second order's top 10 holds all four, the path's three (16 probes: 0, 1, 3, 4, at 3 times the time). The audit's own
figures (`mechaudit audit mechaudit/examples/minilm/minilm.toml --select L207`, 30 components checked): all 4
carriers found, their estimates 0.28, 0.20, 0.11, 0.10 against exact 0.27, 0.18, 0.13, 0.11; Spearman 0.985
[0.94, 1.00] and recall 0.9 over the checked set (with the neurons at their outputs: 0.76 [0.55, 0.88], recall 0.8;
the path screen alone: 0.665, recall 0.8, 2 carriers). The screen's cost grows with the output (`python
benchmarks/second_order_cost.py`: a toy with GPT-2's output shape, 64 prompts x 32 tokens x 50,257 logits, one
64-unit layer, so that the output dominates): 31 s and +2.3 GB of peak memory against the 3-point path screen's 8 s
and +2.3 GB, which it runs as well (before it drew one probe at a time: 52 s, +7.3 GB) (4 times its time where the
output is this large; on MiniLM's small outputs about 1.2 times, measured before the screen drew one probe at a
time, and the whole rule's time is unchanged since: 21.6 s against 20.6 s); the first-order share adds nothing to
the peak of the two runs' outputs. It is charged in the plan for a `similarity` behaviour (stationary on the
corrupted run by construction: the one behaviour that turns it on) as a forward pass and 9 backward passes per
batch; a metric found stationary otherwise runs it uncharged.
The QK fix does not apply (a head component is the head's output, after its softmax); GradDrop: above
(`mechaudit.techniques.atp`).
Measured (`benchmarks/atp_screen.py`, every component patched both ways): on the 2,048 `mlp.c_fc` neurons and
8 heads of a random-weight 2-layer, 256-wide GPT-2, Spearman 0.97 and recall of the exact top 32 by the screen's
top 32 0.91, the screen 580x faster than exact patching of all; on `digits` 0.99 (top-10 recall 0.9), on
`induction` 1.00 (its two heads the top two).
Intervals: every exactly patched component's recovered fraction carries a 95% percentile-bootstrap interval over the
pairs (500 resamples, seeded, the same resamples for every component, ratio of the resampled sums of its per-pair
effects and of the per-pair gaps, both measured once: no model run per resample); the finding's interval is the top
component's, each row of `components` has its `recovered_interval`, and the components whose interval straddles
`min_recovered` (carrier or not by a coin flip) are listed as `uncertain_carriers` and named in the message. The
finding's interval belongs to the component chosen as the largest of the estimates: that choice favours a component
whose fraction came out high on these pairs (the winner's curse), so the interval, and the value, lean high when several
components recover about as much (the top fraction measured on fresh pairs would tend to be lower, by up to the
spread between them). `uncertain_carriers` covers only the components patched exactly: with the screen on (see above;
`exhaustive` off) a component the screen left out has no interval and can be neither carrier nor uncertain. The relative
effect judged against `min_effect` carries its interval too (`relative_effect_interval`); when it straddles `min_effect`
the message says so. Measured: on `digits` (256 pairs) `features.0:ch7` recovers 0.367, interval 0.360-0.371, and 4
components' intervals straddle 0.1; on `induction` `blocks.1.attn:h3` 0.984 (0.979-0.988); the relative effect of
`digits-control`, 6.1%, has the interval 4.3-8.3%, below `min_effect`.
Time budget: screened components are patched exactly in order, the screen's `top_k` first (then the path screen's,
then the calibration sample in a seeded random order), in chunks that stop before the rule's time-out would be
reached (`mechaudit/deadline.py`: 15% of the budget is kept for the intervals and the evidence), so that a loaded
machine gives a reduced result instead of an `error`. A cut finding says how many of the planned exact patches ran
(`time_budget_cut`); the screen's candidates left out are listed with their estimates (`unchecked_candidates`,
named in the message: the screen's prediction stands for them, unchecked), and the carriers, the agreement figures
and the calibration bound come from the components that ran (`screen.checked_exactly`, `screen.calibration`).
Raise `--rule-timeout` (0: none) to patch them all.
""",
    fix="""
Nothing to fix by itself: read which components carry the behaviour. If they carry a shortcut (a watermark, a
protected attribute), suppress or retrain them and re-audit (R303 simulates such an edit).
""",
    references=(
        "Vig et al. (2020). Investigating Gender Bias in Language Models Using Causal Mediation Analysis. NeurIPS.",
        "Meng, Bau, Andonian, Belinkov (2022). Locating and Editing Factual Associations in GPT. NeurIPS.",
        "Nanda (2023). Attribution Patching: Activation Patching At Industrial Scale. "
        "https://www.neelnanda.io/mechanistic-interpretability/attribution-patching",
        "Syed, Rager, Conmy (2023). Attribution Patching Outperforms Automated Circuit Discovery. arXiv:2310.10348",
        "Kramar, Lieberum, Shah, Nanda (2024). AtP*: An efficient and scalable method for localizing LLM behaviour "
        "to components. arXiv:2403.00745",
    ),
)
RULE = RuleDefinition("L207", "activation-patching", "info", DOCS)


@dataclass(frozen=True)
class PatchingParams:
    metric: str = param("logit_diff", choices=("logit_diff", "target_logit"),
                        doc="without a [behaviour]: what is measured on each pair")
    target: str = param("", doc="target_logit: the class (name or index); default the clean prediction")
    samples: int = param(256, low=1, doc="pairs patched (the first ones)")
    top_k: int = param(10, low=1, doc="components listed; screened: the screen's top components patched exactly")
    exhaustive: bool = exhaustive_param("patched")
    calibration: int = calibration_param("patched")
    screen_steps: int = screen_steps_param(3, "one: the corrupted run's gradient (plain attribution patching); two: "
                                              "the corrupted and the clean run's")
    min_recovered: float = param(0.1, low=0.0, high=1.0, doc="a component recovering at least this fraction of "
                                                             "the behaviour carries it")
    min_effect: float = param(0.1, low=0.0, doc="change of the metric between corrupted and clean inputs, as a "
                                                "share of its clean size, below which there is nothing to localise")
    screen_graddrop: str = graddrop_param()


class PatchingEvidence(TypedDict, total=False):
    """The evidence of L207's findings (each finding holds some of these keys)."""

    behaviour: str
    carried: bool
    carriers: list
    components: list  # each row: component, layer, recovered_fraction, recovered_interval [low, high], estimate
    gap_against: str
    metric_clean: float
    metric_corrupted: float
    pairs: int
    presence: dict
    rank_correlation_attribution_exact: float
    relative_effect: float
    relative_effect_interval: list  # [low, high], 95% bootstrap over the pairs
    samples: int
    scored: int
    screen: dict
    verified: int
    attention_patterns: list  # of the carrier heads, over the clean inputs (decomposition_evidence.unit_pictures)
    uncertain_carriers: list  # components whose recovered fraction's interval straddles min_recovered
    token_attribution: list  # token-id models: IG per token of a few clean prompts vs their corrupted twins
    unchecked_candidates: list  # screened candidates the time budget left unpatched: component, attribution_estimate


def _cost(sizes: Sizes, params: PatchingParams) -> Cost:
    """On ``samples`` pairs: the clean and corrupted runs, attribution patching (``screen_steps`` forward and
    backward passes; with one, a no-grad clean run for the end activations), then the exact patch of each component
    checked exactly (every one up to the screen's threshold, else the screen's ``top_k`` and a calibration sample;
    a forward pass each: the layers after it where the model can be traced, the whole model where it cannot, as
    Hugging Face GPT-2) and one pass of the clean inputs they are patched from; for token-id models, the
    evidence's integrated gradients over a few prompts (charged to every model: a few hundred sample-passes).
    A ``similarity`` behaviour is stationary on the corrupted run by construction (the only metric that turns the
    second-order screen on): its screen is charged too, a forward pass with gradients, the gradient's and each
    probe's two backward passes, and the metric's own derivatives in the output (a few outputs' worth per batch)."""
    from ..techniques.token_attribution import MAX_SAMPLES, N_STEPS

    n = sizes.n(params.samples)
    exact = checked_exactly(sizes.hidden_units, params.exhaustive, params.top_k, params.calibration)
    clean_end = forwards(sizes, n, 1) if params.screen_steps == 1 else Cost()  # one step: a no-grad clean run
    # the screen holds ~5 batch copies: both inputs' activations at the sites, the autograd graph, moved sites, grads
    cost = (forwards(sizes, n, 3 + exact) + with_gradients(sizes, n, params.screen_steps, copies=5) + clean_end
            + with_gradients(sizes, min(n, MAX_SAMPLES) * N_STEPS))
    if sizes.behaviour == "similarity" and sizes.hidden_units > atp.SCREEN_ABOVE and not params.exhaustive:
        cost = cost + _second_order_cost(sizes, n)
    elif sizes.hidden_units > atp.SCREEN_ABOVE and not params.exhaustive:  # AtP*'s GradDrop, when on
        drops = graddrop.charged(params.screen_graddrop, [layer.kind for layer in sizes.hidden],
                                 [True] * len(sizes.hidden), [layer.name for layer in sizes.hidden])
        if drops:  # the path screen once more per block
            cost = cost + with_gradients(sizes, n, params.screen_steps * drops, copies=5) \
                + (forwards(sizes, n, drops) if params.screen_steps == 1 else Cost())
    return cost


def _second_order_cost(sizes: Sizes, samples: int) -> Cost:
    """The second-order screen (:func:`~.second_order.second_order_patching`): per batch one forward pass kept for
    autograd and ``1 + 2 * PROBES`` backward passes through the model; before it, finding and checking the readers
    on a sample of the pairs (:func:`~.second_order.patch_sites`)."""
    backward = (2 * second_order.PROBES) * samples
    check = unit_split_check(sizes, min(samples, sizes.batch_size, second_order.SITE_CHECK_SAMPLES))
    return (with_gradients(sizes, samples, 1, copies=5)
            + Cost(backward=backward, calls=2 * second_order.PROBES * sizes.batches(samples)) + check)


COST = RuleCost(_cost, reduce="samples")


@register("patching", PatchingParams, needs=("pairs", "layers", "logits", "patch_metric"), rule=RULE,
          evidence=PatchingEvidence, cost=COST)
def patching(context: AuditContext, rule) -> list[Measurement]:
    params: PatchingParams = rule.params
    clean, corrupted, targets, metric, description = _problem(context, params)
    layers = context.view.hidden_layers
    device, batch = context.device, context.batch_size
    components = [(layer, unit) for layer in layers for unit in range(layer.size)]
    screened = len(components) > atp.SCREEN_ABOVE and not params.exhaustive
    totals = metric_totals(context.view, clean, corrupted, targets, metric, batch, device, first_order=screened)
    evidence = {"behaviour": description, "pairs": totals.pairs, "metric_clean": totals.clean / totals.pairs,
                "metric_corrupted": totals.corrupted / totals.pairs, "samples": totals.pairs}
    relative = abs(totals.effect) / max(abs(totals.clean), 1e-12)
    evidence["relative_effect"] = relative
    found = behaviour_presence(*totals.per_pair)
    evidence["presence"] = found.to_dict()
    if not found.present:
        return [behaviour_absent(found, description, "clean minus corrupted inputs of the pairs", evidence)]
    effect_interval = relative_effect_interval(totals, context.seed)
    evidence["relative_effect_interval"] = _pair(effect_interval)
    effect_note = ""
    if effect_interval is not None and effect_interval.straddles(params.min_effect):
        effect_note = (f" [uncertain: the 95% interval of the relative effect, {effect_interval.low:.1%}.."
                       f"{effect_interval.high:.1%}, straddles min_effect {params.min_effect:.0%}]")
    if relative < params.min_effect:
        return [Measurement(f"the counterfactual barely changes the {description} ({relative:.1%} of its clean size): "
                        "no component carries a difference to localise" + effect_note,
                        metric="top_recovered_fraction", value=0.0, evidence={**evidence, "carried": False})]
    def path_screen() -> dict[str, torch.Tensor]:
        return attribution_patching(context.view, layers, clean, corrupted, targets, metric, batch, device,
                                    params.screen_steps)
    began = time.perf_counter()
    path = path_screen()
    seconds = time.perf_counter() - began
    method = ("attribution patching (AtP*): (a_clean - a_corrupted) . dm/da, gradient averaged over "
              f"{params.screen_steps} point(s) of the straight path from the corrupted to the clean run")
    also: list[int] = []
    first_order = screened and totals.first_order_share >= second_order.STATIONARY
    dropped, dropped_evidence = graddrop.path_screen(params.screen_graddrop, context.view, layers, path_screen,
                                                     seconds, clean[:graddrop.PROBE_SAMPLES].to(device)) \
        if first_order else (None, graddrop.not_used("stationary metric" if screened else "not screened"))
    estimate = torch.cat([graddrop.ranked(dropped, "patch", layer, path[layer.name].unsqueeze(1),
                                          lambda e: e.sum(1) / totals.effect) for layer in layers])
    if screened and totals.first_order_share < second_order.STATIONARY:
        # every first-order term vanishes: rank by the second-order screen, and patch the path screen's top too
        also = estimate.argsort(descending=True, stable=True)[:params.top_k].tolist()
        sites = second_order.patch_sites(context.view, layers, corrupted, clean, batch, device)
        estimated = second_order.second_order_patching(context.view, layers, corrupted, clean, targets, metric,
                                                       second_order.PROBES, batch, device, context.seed, sites=sites)
        estimate = torch.cat([estimated[layer.name].double().sum(1).float() for layer in layers]) / totals.effect
        method = (f"second-order patching estimate (the metric is stationary on the corrupted run: the first-order "
                  f"term predicts {totals.first_order_share:.1e} of the effect): g . J d + 1/2 (J d)^T H (J d) at "
                  f"the corrupted run ({len(sites)} layer(s) at their reader's input), the Hessian term from "
                  f"{second_order.PROBES} "
                  f"random output directions; the top {params.top_k} of the path screen ({method}) are patched "
                  "exactly too")
    names = [layer.address(unit) for layer, unit in components]
    selection = (atp.select(estimate, params.top_k, params.calibration, context.seed, also=also) if screened
                 else atp.everything(len(components)))
    tokens = token_attribution(context, clean, corrupted, targets, metric)  # before the exact patches the time
    # budget may cut: what runs after them must fit in its reserve
    planned = selection
    if screened:
        per_pair, selection = _confirmed(context, components, selection, also, clean, corrupted, targets, metric,
                                         totals.per_pair[1])
    else:
        per_pair = _patched(context, components, selection.checked, clean, corrupted, targets, metric,
                            base=totals.per_pair[1])
    per_pair = {index: per_pair[index] for index in selection.checked}
    unchecked = [{"component": names[index], "attribution_estimate": float(estimate[index])}
                 for index in planned.top + [i for i in also if i in planned.extra] if index not in per_pair]
    if unchecked:
        evidence["unchecked_candidates"] = unchecked
    fractions = {index: float(per_pair[index].sum(0).float()) / totals.effect for index in selection.checked}
    ordered = sorted(selection.checked, key=lambda index: -fractions[index])
    intervals = recovered_intervals(per_pair, totals, context.seed)
    rows = [{"component": names[index], "layer": components[index][0].name,
             "recovered_fraction": fractions[index], "recovered_interval": _pair(intervals[index]),
             "attribution_estimate": float(estimate[index])}
            for index in ordered[:params.top_k]]
    if screened:
        screen = atp.report(selection, estimate, fractions, names, method, threshold=params.min_recovered)
        evidence["screen"] = {**screen.to_evidence(), "first_order_share": totals.first_order_share,
                              "path_screen_checked": [names[index] for index in selection.extra],
                              "graddrop": dropped_evidence}
        agreement = screen.spearman
    else:
        why = "exhaustive = true" if params.exhaustive else f"at most {atp.SCREEN_ABOVE} components"
        agreement = atp.report(selection, estimate, fractions, names, "").spearman
        evidence["screen"] = {"method": f"exact patching of every component ({why})", "scored": len(components),
                              "checked_exactly": len(components), "calibration": 0, "spearman": agreement}
    carriers = [names[index] for index in ordered if fractions[index] >= params.min_recovered]
    uncertain = [names[index] for index in ordered
                 if intervals[index] is not None and intervals[index].straddles(params.min_recovered)]
    if not rows:  # the time budget ran out before the first exact patch: the screen's top estimate stands
        first = unchecked[0]
        return [Measurement(
            f"no component was patched exactly (the time budget ran out first): the screen estimates that "
            f"{first['component']} alone recovers {first['attribution_estimate']:.0%} of the {description}, a "
            "prediction, not a measurement" + effect_note, location=Location.of_address(first["component"]),
            metric="predicted_top_recovered_fraction", value=first["attribution_estimate"],
            interval=Interval(min(0.0, first["attribution_estimate"]), max(1.0, first["attribution_estimate"]),
                              "unmeasured: the screen estimates this fraction, no exact patch measured it",
                              level=1.0),
            evidence={**evidence, "carried": True, "carriers": [], "components": [], "verified": 0,
                      "scored": len(components), **tokens})]
    top = rows[0]
    return [Measurement(
        f"patching {top['component']} alone recovers {top['recovered_fraction']:.0%} of the {description}; "
        f"{len(carriers)} component(s) recover at least {params.min_recovered:.0%}"
        + _uncertain_note(uncertain, params.min_recovered) + _unchecked_note(unchecked) + effect_note,
        location=Location.of_address(top["component"]),
        metric="top_recovered_fraction", value=top["recovered_fraction"], interval=intervals[ordered[0]],
        evidence={**evidence, "carried": True, "carriers": carriers, "uncertain_carriers": uncertain,
                  "components": rows,
                  "verified": len(selection.checked), "scored": len(components),
                  "rank_correlation_attribution_exact": agreement,
                  **unit_pictures(context, [c for c in carriers if context.view.resolve(c)[0].kind == "heads"], clean),
                  **tokens},
    )]


def _patched(context: AuditContext, components: list, indices: list[int], clean: torch.Tensor,
             corrupted: torch.Tensor, targets: torch.Tensor, metric, scanner: AblationScanner | None = None,
             base: torch.Tensor | None = None) -> dict[int, torch.Tensor]:
    """Each component of ``indices``' exact effect per pair, patched alone (clean into the corrupted run);
    ``base``: the corrupted runs' metric when already computed."""
    chosen: dict[str, list[int]] = {}
    for index in sorted(indices):
        layer, unit = components[index]
        chosen.setdefault(layer.name, []).append(unit)
    layers = [layer for layer in context.view.hidden_layers if layer.name in chosen]
    exact = exact_patching(context.view, layers, clean, corrupted, targets, metric, chosen, context.batch_size,
                           context.device, scanner=scanner, per_pair=True, base=base)
    effect_of = {(name, unit): exact[name][row] for name, units in chosen.items() for row, unit in enumerate(units)}
    return {index: effect_of[(components[index][0].name, components[index][1])] for index in indices}


def _confirmed(context: AuditContext, components: list, selection: atp.Selection, also: list[int],
               clean: torch.Tensor, corrupted: torch.Tensor, targets: torch.Tensor, metric, base: torch.Tensor
               ) -> tuple[dict[int, torch.Tensor], atp.Selection]:
    """The screen's selection patched exactly, the most important first, while the rule's time budget allows
    (:func:`~mechaudit.deadline.confirm`): the screen's top-k in its order, the path screen's (``also``), then the
    calibration sample in a seeded random order (a cut keeps a random sample). Returns the per-pair effects and the
    selection of the components that ran. ``base``: the corrupted runs' metric per pair (:func:`metric_totals`),
    the baseline of every chunk."""
    ranked = selection.top + [i for i in also if i in set(selection.extra)]
    layers = {components[index][0].name for index in selection.checked}
    scanner = AblationScanner(context.view, [layer for layer in context.view.hidden_layers if layer.name in layers],
                              context.device, corrupted[:2])
    per_pair: dict[int, torch.Tensor] = {}

    def run(chunk: list[int]) -> None:
        per_pair.update(_patched(context, components, chunk, clean, corrupted, targets, metric, scanner, base))
    return per_pair, confirm_selection(selection, run, "exact patches", context.seed, ranked)


def recovered_intervals(per_pair: dict[int, torch.Tensor], totals: PatchingTotals,
                        seed: int) -> dict[int, Interval | None]:
    """Each component's recovered fraction, ``sum patched effect / sum (clean - corrupted)`` over the pairs, as a
    percentile-bootstrap interval over the pairs (the same resamples for every component; per-pair effects already
    measured, no model run per resample)."""
    keys = list(per_pair)
    if not keys:
        return {}
    effects = torch.stack([per_pair[k] for k in keys], 1).numpy()  # (pairs, components)
    gaps = (totals.per_pair[0] - totals.per_pair[1]).numpy()
    weights = resampled.counts(resampled.draws(len(gaps), seed=seed), len(gaps))
    found = resampled.intervals(resampled.ratio_of_sums(effects, gaps, weights), len(gaps), over="pairs")
    return dict(zip(keys, found))


def relative_effect_interval(totals: PatchingTotals, seed: int) -> Interval | None:
    """Bootstrap interval over the pairs of the relative effect ``|sum (clean - corrupted)| / |sum clean|``."""
    clean, corrupted = (values.numpy() for values in totals.per_pair)
    return bootstrap(lambda idx: abs(clean[idx].sum() - corrupted[idx].sum()) / max(abs(clean[idx].sum()), 1e-12),
                     len(clean), over="pairs", seed=seed)


def _pair(interval: Interval | None) -> list[float] | None:
    return None if interval is None else [round(interval.low, 6), round(interval.high, 6)]


def _uncertain_note(uncertain: list[str], threshold: float) -> str:
    if not uncertain:
        return ""
    shown = ", ".join(uncertain[:3]) + (", ..." if len(uncertain) > 3 else "")
    return (f" [uncertain: the 95% interval of {len(uncertain)} component(s) ({shown}) straddles "
            f"{threshold:.0%}]")


def _unchecked_note(unchecked: list[dict]) -> str:
    if not unchecked:
        return ""
    shown = ", ".join(f"{row['component']} {row['attribution_estimate']:.0%}" for row in unchecked[:3])
    return (f" [{len(unchecked)} of the screen's candidates not patched exactly for lack of time ({shown}"
            f"{', ...' if len(unchecked) > 3 else ''}): the screen's estimates stand for them, unchecked]")


def _problem(context: AuditContext, params: PatchingParams):
    """``(clean, corrupted, targets, metric, description)`` for the declared behaviour, or the rule's metric."""
    if context.behaviour is not None:
        problem = circuit_problem(context, params.samples)
        if problem.reference is not None:
            return problem.inputs, problem.reference, problem.targets, problem.behaviour, problem.description
    if context.task != "classification":
        raise ValueError("declare a [behaviour] to patch a model that is not a classifier")
    clean_all, corrupted_all = context.data.pairs
    clean, corrupted = clean_all[:params.samples], corrupted_all[:params.samples]
    clean_out = model_outputs(context.model, clean, context.batch_size, context.device)
    corrupted_out = model_outputs(context.model, corrupted, context.batch_size, context.device)
    first = (torch.full((len(clean),), class_index(context, params.target)) if params.target
             else clean_out.argmax(-1))
    if params.metric == "target_logit":
        what = f"logit of class '{params.target}'" if params.target else "logit of the clean prediction"
        return clean, corrupted, first, target_logit, what
    ranked = corrupted_out.argsort(-1, descending=True)
    second = torch.where(ranked[:, 0] == first, ranked[:, 1], ranked[:, 0])
    metric: Behaviour = logit_difference
    return (clean, corrupted, torch.stack([first, second], 1), metric,
            "logit difference between the clean prediction and the corrupted one")
