"""R305: the audit's weaknesses turned into adversarial tests: PGD confined to a flagged input region, and PGD
that drives a critical unit or a declared set of components (a single point of failure, a circuit)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

from ..activations import collect_units
from ..addresses import input_address
from ..context import AuditContext
from ..cost import Cost, RuleCost, Sizes, forwards, with_gradients
from ..findings import Location, Measurement
from ..techniques.component_attack import component_attack, unit_ablation_flips
from ..techniques.region_attack import AttackCurves, attack_curves, predictions, untargeted_curves
from ..techniques.uncertainty import proportion_interval
from .circuit_common import mean_values
from .registry import RuleDefinition, RuleDocs, param, register

DOCS = RuleDocs(
    summary="A small perturbation of a flagged input region, or one that drives a critical unit, changes many "
            "predictions.",
    what="""
For every declared input region (`[data.masks]`, the regions L201 judges), on a seeded subset of at most
`samples` audit samples: projected gradient descent that may change only the region's values, within an
L-infinity ball of radius epsilon and inside the audit data's value range, against (a) the same attack over the
whole input and (b) random noise of the same size in the region. Each gives the share of predictions that change,
for every epsilon of `epsilons` (fractions of the input range); the curves are the evidence, with the smallest
epsilon at which each flips `share` of the predictions. The finding fails when the region attack flips more than
`max_flip_rate` of the predictions at the budget `epsilon`.

The same for components: the `units` critical units (those whose mean ablation alone changes the most
predictions, L202's measure on the attacked samples) one at a time, and the declared `components` (e.g. R304's
single points of failure or R301's circuit units, by address) together. The attack perturbs the whole input to
drive the units, not the output: each unit is pushed from the side of its mean it sits on towards and past its
mean (the value mean ablation writes); it is read against PGD on the output over the whole input and against
random noise of the same size over the whole input. The finding fails when it flips more than
`max_component_flip_rate` of the predictions at `component_epsilon`.
""",
    why="""
L201 says the model uses a region it must not; this rule says what that costs: how easily someone who controls
only that region (a sticker, a watermark, a tag) changes the model's decisions. Random noise in the region shows
whether any change there moves the model or only a crafted one does; the whole-input attack of the same budget
is the general fragility the region attack is read against (most undefended models flip under it at small
budgets, which is not what this rule judges). For a unit: L202 and R304 say that removing it changes decisions;
the attack says whether a small change of the input reaches it, so the weakness is exploitable from outside.
""",
    how="""
Projected gradient descent (Madry, Makelov, Schmidt, Tsipras, Vladu 2018) from the Adversarial Robustness
Toolbox (ART 1.20, `ProjectedGradientDescent` with its `mask` argument confining the perturbation and
`clip_values` set to the audit data's range; untargeted, away from the model's own prediction, `steps` steps of
epsilon/4, no random start, so the result is deterministic). ART rather than torchattacks: torchattacks 3.5.1 pins
`requests~=2.25`, requires torchvision and hard-codes inputs in [0, 1] without masks. Noise: each value of the
region moved by +-epsilon at random (seeded), clipped to the range. Threshold, from measurement on 256 samples of
the embedded examples (epsilons 0.05, 0.1, 0.2, 0.3, 0.5, 1.0): the region attack flips 2.0%, 3.9%, 10.2%,
14.5%, 20.3%, 35.2% of `digits`' predictions through its 2x2 watermark and 0.0%, 0.4%, 1.6%, 2.3%, 3.5%, 5.5% of
`digits-control`'s (10% of `digits`' predictions flip through the watermark at epsilon 0.2; the control's never
reach 10%); random noise in the region flips 11.3% and 0.8% at 0.5, 18.4% and 3.1% at 1.0 (the watermark is
sensitive to any change, a crafted one moves it further); the whole-input attack flips 99% of both at 0.2.
At the budget 0.5 (half the input range) the limit 0.1 sits between 0.035 (control) and 0.203 (`digits`), a
factor 2 or more from each.

Units: the objective `sum_u s_u (a_u(x + delta) - mean_u) / std_u` (per sample and position, `s_u` the sign of
the clean deviation) is minimised by the same steps (sign of the gradient, epsilon/4, `steps` iterations, no
random start, projected onto the ball and the range) in a small loop of our own
(`mechaudit.techniques.component_attack`): ART's estimators differentiate a loss of the model's output and
labels, and this objective reads a hidden layer with a direction per sample and unit. The baselines are ART's.
Measured on the same 256 samples, the three critical units of `digits` (`features.0:ch7`, `classifier.0:u6`,
`classifier.0:u12`, whose ablation alone flips 8.6%, 7.8%, 7.0%) flip 3.1%, 11.3%, 12.5% under the unit attack at
epsilon 0.1, those of `digits-control` (`features.0:ch7`, `features.0:ch3`, `classifier.0:u16`; 3.1%, 2.7%, 2.7%)
2.3%, 2.3%, 5.5%; noise of that size flips 5.5% and 2.3%, PGD on the output 60% and 49%. The limit 0.08 at 0.1 sits
between 0.055 and 0.113, a factor 1.4 from each: a thin margin (a 95% interval on 256 samples is about +-3
points), so the unit findings are evidence to read beside L202 rather than a sharp verdict; at 0.2 and above the
unit attacks of both models flip more than half of the predictions.

Each judged flip rate (the region attack's at `epsilon`, a unit's or component's at `component_epsilon`) carries
a 95% Wilson score interval over the attacked samples (a proportion's interval: a bootstrap of the per-sample flips
gave [0, 0] to a rate of 0, which 0 flips of 200 do not prove; Wilson's reaches 1.9%); the attacks are not rerun,
so the interval says how much the rate rests on the samples drawn, not on PGD's path. A verdict whose interval
straddles its limit reads `uncertain`: on `digits`, `classifier.0:u6` (0.113, interval 0.0800 to 0.158 against
0.08) sits at the edge (its low end 0.00004 above the limit: certain, by a hair; the percentile bootstrap gave
0.074 to 0.152, uncertain); the region attack (0.203, interval 0.158 to 0.257 against 0.1) is certain. The
predictions every attack is read against are found once, on the attacked samples, by the same model call as the
predictions after each attack (`region_attack.predictions`).
""",
    fix="""
Remove the model's reliance on the region (see L201's fix: retrain without the shortcut, or erase its direction
with `mechaudit edit --erase`), or mask the region at inference. Adversarial training on region-confined
perturbations hardens the region without removing the reliance; audit the retrained model again. For a unit:
spread what it carries (dropout, retraining with the unit ablated at random) so that no single unit decides
(see L202 and R304), then attack again.
""",
    references=(
        "Madry, Makelov, Schmidt, Tsipras, Vladu (2018). Towards Deep Learning Models Resistant to Adversarial "
        "Attacks. ICLR.",
        "Nicolae et al. (2018). Adversarial Robustness Toolbox v1.0.0. arXiv:1807.01069",
    ),
)
RULE = RuleDefinition("R305", "weakness-attack", "warning", DOCS, opt_in=True)


@dataclass(frozen=True)
class WeaknessAttackParams:
    epsilon: float = param(0.5, low=0.0, high=1.0, doc="the judged budget: L-infinity radius, as a fraction of the "
                                                       "input range")
    max_flip_rate: float = param(0.1, low=0.0, high=1.0, doc="fail a region whose attack at `epsilon` changes more "
                                                             "than this share of the predictions")
    epsilons: str = param("0.05,0.1,0.2,0.3,0.5,1.0", doc="the budgets of the curves: comma-separated fractions of "
                                                          "the input range")
    share: float = param(0.1, low=0.0, high=1.0, doc="report the smallest epsilon flipping this share of "
                                                     "predictions")
    steps: int = param(20, low=1, high=1000, doc="PGD iterations per budget")
    samples: int = param(256, low=1, doc="samples attacked (seeded subset)")
    units: int = param(3, low=0, high=64, doc="attack this many critical units: those whose mean ablation alone "
                                              "changes the most predictions (L202's measure); 0: none")
    components: str = param("", doc="comma-separated unit addresses attacked together as one target (e.g. R304's "
                                    "single points of failure or R301's circuit units); empty: none")
    component_epsilon: float = param(0.1, low=0.0, high=1.0, doc="the judged budget of a unit or component attack "
                                                                 "(a fraction of the input range)")
    max_component_flip_rate: float = param(0.08, low=0.0, high=1.0, doc="fail a unit or component whose attack at "
                                                                        "`component_epsilon` changes more than this "
                                                                        "share of the predictions")


class WeaknessAttackEvidence(TypedDict, total=False):
    """The evidence of R305's findings."""

    epsilons: list
    flip_rates: dict
    input_range: list
    judged_epsilon: float
    samples: int
    share: float
    smallest_epsilon: dict
    steps: int
    target: str
    ablation_flip_rate: float
    units: list


def _cost(sizes: Sizes, params: WeaknessAttackParams) -> Cost:
    """Per region and budget: PGD confined to the region and over the whole input (``steps`` forward and
    backward passes each) and random noise; per attacked unit (and the declared component) and budget, PGD on the
    unit (``steps`` passes), after one ablation pass per hidden unit to find them; on ``samples`` samples."""
    n = sizes.n(params.samples)
    budgets = len([e for e in params.epsilons.split(",") if e.strip()]) + 2
    regions = sizes.regions
    targets = params.units + bool(params.components)
    return (forwards(sizes, n, 1 + regions * budgets + (sizes.hidden_units if params.units else 0))
            + with_gradients(sizes, n, (2 * regions + targets) * budgets * params.steps))


COST = RuleCost(_cost, reduce="samples")


@register("weakness_attack", WeaknessAttackParams, needs=("classification", "real_inputs"), rule=RULE,
          evidence=WeaknessAttackEvidence, cost=COST)
def weakness_attack(context: AuditContext, rule) -> list[Measurement]:
    params: WeaknessAttackParams = rule.params
    budgets = _budgets(params.epsilons, params.epsilon, params.component_epsilon)
    indices = context.sample_indices(params.samples)
    inputs = context.data.inputs[indices]
    low, high = float(context.data.inputs.min()), float(context.data.inputs.max())
    if high <= low:
        raise ValueError("the audit inputs are constant: no input range to perturb within")
    targets = _component_targets(context, params, inputs)
    if not context.data.masks and not targets:  # e.g. the compliance rulebook (units = 0) on a model without masks
        return [Measurement("nothing to attack: the spec declares no input region ([data.masks]) and the rule "
                            "attacks no unit (units = 0 or no hidden layer, no `components`)", judged=False)]
    # the predictions every attack is read against, found once, read as after each attack (same model call)
    before = predictions(context.model, inputs, context.batch_size, context.device)
    return _region_findings(context, params, budgets, indices, inputs, before, (low, high)) + _component_findings(
        context, params, budgets, inputs, before, (low, high), targets)


def _region_findings(context: AuditContext, params: WeaknessAttackParams, budgets: list[float],
                     indices, inputs, before, clip: tuple[float, float]) -> list[Measurement]:
    """One finding per declared region: PGD confined to it against PGD on the whole input and noise in it."""
    low, high = clip
    classes = int(context.logits(context.outputs).shape[-1])
    findings = []
    for name, mask in context.data.masks.items():
        if mask.shape == context.data.inputs.shape:  # one mask per sample
            mask = mask[indices]
        curves = attack_curves(context.model, inputs, before, mask, [e * (high - low) for e in budgets],
                               (low, high), classes, params.steps, context.batch_size, context.device, context.seed)
        rates = curves.flip_rates
        judged = rates["region"][budgets.index(params.epsilon)]
        smallest = {kind: _fraction(curves.smallest_epsilon(kind, params.share), low, high) for kind in rates}
        reached = ("no budget up to the whole range" if smallest["region"] is None
                   else f"epsilon {smallest['region']:g}")
        findings.append(Measurement(
            f"PGD confined to {name} changes {judged:.1%} of predictions at epsilon {params.epsilon:g} of the input "
            f"range (random noise there: {rates['noise'][budgets.index(params.epsilon)]:.1%}; the same attack on the "
            f"whole input: {rates['whole_input'][budgets.index(params.epsilon)]:.1%}); {params.share:.0%} of "
            f"predictions flip through the region at {reached}",
            location=Location(component=input_address(name)), metric="region_attack_flip_rate", value=judged,
            threshold=params.max_flip_rate,
            interval=proportion_interval(curves.flipped["region"][budgets.index(params.epsilon)]),
            evidence={"epsilons": budgets, "flip_rates": {k: [round(v, 4) for v in vs] for k, vs in rates.items()},
                      "smallest_epsilon": smallest, "share": params.share, "judged_epsilon": params.epsilon,
                      "input_range": [low, high], "samples": len(inputs), "steps": params.steps,
                      "target": "region"},
        ))
    return findings


def _component_targets(context: AuditContext, params: WeaknessAttackParams, inputs) -> list[tuple[str, list, float]]:
    """``(label, [(layer, unit)], flip rate of mean-ablating them)``: the ``units`` critical units (by the share of
    predictions their mean ablation alone changes) and the declared ``components`` as one target."""
    layers = context.view.hidden_layers
    targets = []
    if params.units and layers:
        flips = unit_ablation_flips(context.view, layers, mean_values(context), inputs, context.batch_size,
                                    context.device)
        targets += [(address, [context.view.resolve(address)], rate) for address, rate in flips[:params.units]]
    declared = [a.strip() for a in params.components.split(",") if a.strip()]
    if declared:
        units = [context.view.resolve(address) for address in declared]
        if any(unit is None for _, unit in units):
            raise ValueError("components must name units (layer:uN, layer:chN, layer:hN), not whole layers")
        targets.append((", ".join(declared), units, None))
    return targets


def _component_findings(context: AuditContext, params: WeaknessAttackParams, budgets: list[float], inputs, before,
                        clip: tuple[float, float], targets: list) -> list[Measurement]:
    """One finding per target: PGD driving its units, against PGD on the whole input and noise of the same size."""
    if not targets:
        return []
    low, high = clip
    classes = int(context.logits(context.outputs).shape[-1])
    absolute = [e * (high - low) for e in budgets]
    baseline = untargeted_curves(context.model, inputs, before, absolute, clip, classes, params.steps,
                                 context.batch_size, context.device, context.seed)
    means, scales = mean_values(context), _scales(context, inputs, [u for _, units, _ in targets for u in units])
    findings = []
    for label, units, ablation in targets:
        flipped = []
        for eps in absolute:
            perturbed = component_attack(context.view, units, means, scales, inputs, eps, clip, params.steps,
                                         context.batch_size, context.device)
            flipped.append(predictions(context.model, perturbed, context.batch_size, context.device) != before.cpu())
        curves = AttackCurves(absolute, {"component": flipped, **baseline.flipped})
        rates = curves.flip_rates["component"]
        at = budgets.index(params.component_epsilon)
        smallest = {kind: _fraction(curves.smallest_epsilon(kind, params.share), low, high)
                    for kind in curves.flip_rates}
        reached = ("no budget up to the whole range" if smallest["component"] is None
                   else f"epsilon {smallest['component']:g}")
        single = len(units) == 1
        location = (Location.of_address(label) if single else None)
        findings.append(Measurement(
            f"PGD driving {label} changes {rates[at]:.1%} of predictions at epsilon {params.component_epsilon:g} of "
            f"the input range (random noise: {curves.flip_rates['noise'][at]:.1%}; PGD on the output: "
            f"{curves.flip_rates['whole_input'][at]:.1%}); {params.share:.0%} of predictions flip through "
            f"{'it' if single else 'them'} at {reached}",
            location=location, metric="component_attack_flip_rate", value=rates[at],
            threshold=params.max_component_flip_rate,
            interval=proportion_interval(flipped[at]),
            evidence={"epsilons": budgets,
                      "flip_rates": {k: [round(v, 4) for v in vs] for k, vs in curves.flip_rates.items()},
                      "smallest_epsilon": smallest, "share": params.share, "judged_epsilon": params.component_epsilon,
                      "input_range": [low, high], "samples": len(inputs), "steps": params.steps,
                      "target": "unit" if ablation is not None else "components",
                      "units": [layer.address(unit) for layer, unit in units],
                      **({"ablation_flip_rate": round(ablation, 4)} if ablation is not None else {})},
        ))
    return findings


def _scales(context: AuditContext, inputs, units: list) -> dict:
    """Per layer of ``units``: each unit's standard deviation per position over ``inputs`` (the objective's
    scale, so that units of different layers weigh alike)."""
    layers = {layer.name: layer for layer, _ in units}
    seen = collect_units(context.view, list(layers.values()), inputs, context.batch_size, context.device)
    return {name: units.float().std(0) for name, units in seen.items()}


def _budgets(text: str, *judged: float) -> list[float]:
    """The sorted budgets of ``epsilons`` (comma-separated) and the judged ones; ValueError when one is not in
    (0, 1]."""
    try:
        budgets = sorted({float(e) for e in text.split(",") if e.strip()} | set(judged))
    except ValueError:
        raise ValueError(f"epsilons must be comma-separated numbers, not {text!r}") from None
    if any(not 0 < e <= 1 for e in budgets):
        raise ValueError("every epsilon must lie in (0, 1] (a fraction of the input range)")
    return budgets


def _fraction(epsilon: float | None, low: float, high: float) -> float | None:
    return None if epsilon is None else round(epsilon / (high - low), 6)
