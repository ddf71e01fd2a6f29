"""R305: the audit's weaknesses turned into adversarial tests: PGD confined to a flagged input region."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

from ..addresses import input_address
from ..context import AuditContext
from ..findings import Location, Measurement
from ..techniques.region_attack import attack_curves
from .registry import RuleDefinition, RuleDocs, param, register

DOCS = RuleDocs(
    summary="A small perturbation of a flagged input region alone changes many predictions.",
    what="""
For every declared input region (`[data.masks]`, the regions L201 judges), on a seeded subset of at most
`samples` audit samples: projected gradient descent that may change only the region's values, within an
L-infinity ball of radius epsilon and inside the audit data's value range, against (a) the same attack over the
whole input and (b) random noise of the same size in the region. Each gives the share of predictions that change,
for every epsilon of `epsilons` (fractions of the input range); the curves are the evidence, with the smallest
epsilon at which each flips `share` of the predictions. The finding fails when the region attack flips more than
`max_flip_rate` of the predictions at the budget `epsilon`.
""",
    why="""
L201 says the model uses a region it must not; this rule says what that costs: how easily someone who controls
only that region (a sticker, a watermark, a tag) changes the model's decisions. Random noise in the region shows
whether any change there moves the model or only a crafted one does; the whole-input attack of the same budget
is the general fragility the region attack is read against (most undefended models flip under it at small
budgets, which is not what this rule judges).
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
""",
    fix="""
Remove the model's reliance on the region (see L201's fix: retrain without the shortcut, or erase its direction
with `mechaudit edit --erase`), or mask the region at inference. Adversarial training on region-confined
perturbations hardens the region without removing the reliance; audit the retrained model again.
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


@register("weakness_attack", WeaknessAttackParams, needs=("masks", "classification", "real_inputs"), rule=RULE,
          evidence=WeaknessAttackEvidence)
def weakness_attack(context: AuditContext, rule) -> list[Measurement]:
    params: WeaknessAttackParams = rule.params
    budgets = _budgets(params.epsilons, params.epsilon)
    indices = context.sample_indices(params.samples)
    inputs = context.data.inputs[indices]
    low, high = float(context.data.inputs.min()), float(context.data.inputs.max())
    if high <= low:
        raise ValueError("the audit inputs are constant: no input range to perturb within")
    classes = int(context.logits(context.outputs).shape[-1])
    findings = []
    for name, mask in context.data.masks.items():
        if mask.shape == context.data.inputs.shape:  # one mask per sample
            mask = mask[indices]
        curves = attack_curves(context.model, inputs, mask, [e * (high - low) for e in budgets], (low, high),
                               classes, params.steps, context.batch_size, context.device, context.seed)
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
            evidence={"epsilons": budgets, "flip_rates": {k: [round(v, 4) for v in vs] for k, vs in rates.items()},
                      "smallest_epsilon": smallest, "share": params.share, "judged_epsilon": params.epsilon,
                      "input_range": [low, high], "samples": len(inputs), "steps": params.steps},
        ))
    return findings


def _budgets(text: str, judged: float) -> list[float]:
    """The sorted budgets of ``epsilons`` (comma-separated) and the judged one; ValueError when one is not in
    (0, 1]."""
    try:
        budgets = sorted({float(e) for e in text.split(",") if e.strip()} | {judged})
    except ValueError:
        raise ValueError(f"epsilons must be comma-separated numbers, not {text!r}") from None
    if any(not 0 < e <= 1 for e in budgets):
        raise ValueError("every epsilon must lie in (0, 1] (a fraction of the input range)")
    return budgets


def _fraction(epsilon: float | None, low: float, high: float) -> float | None:
    return None if epsilon is None else round(epsilon / (high - low), 6)
