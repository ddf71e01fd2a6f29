"""L204: attribution faithfulness, by deletion and insertion curves against a random order, with infidelity."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

import numpy as np
import torch

from ..context import AuditContext
from ..cost import Cost, RuleCost, Sizes, attributions, forwards, uses
from ..findings import Measurement
from ..techniques.attribution import METHODS
from ..techniques.deletion import Curves, infidelity, perturbation_curves, random_scores
from ..techniques.uncertainty import Interval, bootstrap
from .attribution_common import predicted_attributions, reliability, unreliable_suffix
from .input_baseline import BaselineParams, input_baseline
from .registry import RuleDefinition, RuleDocs, param, register

DOCS = RuleDocs(
    summary="Removing the inputs the attribution ranks first changes the prediction no faster than a random order.",
    what="""
On `curve_samples` of the attributed samples (the same attributions as L201's by default), the input elements are
removed (set to the baseline, zero) in the order of their attribution to the predicted class, most positive
first, and the probability of that class is followed (deletion curve); and restored in the same order from the
baseline (insertion curve); both at `steps` fractions of the input, against `random_orders` random orders. Two
findings: `deletion_auc_ratio`, the attribution order's area over the random order's, and
`insertion_auc_ratio`, the random order's area over the attribution order's; areas are measured above the
baseline's probability (where deletion ends and insertion starts), so that a floor the probability cannot fall
below (about 0.5 for two classes) does not compress the comparison; capped at 10. 1 is no better than random;
either above `max_auc_ratio` fails. Evidence: the mean curves, captum's infidelity of the attribution and of a
random one, the `top_inputs` input elements with the largest mean attribution, and the attribution sanity status.
""",
    why="""
An attribution is only useful if the inputs it ranks first are the ones the prediction depends on. If deleting
them does no more than deleting random inputs, the attribution does not explain the decision, and findings that
read it (L201's attribution ratio) say nothing about the model.
""",
    how="""
Deletion and insertion (Petsiuk, Das, Saenko 2018, RISE; pixel flipping, Samek et al. 2017) and infidelity (Yeh
et al. 2019, captum: Gaussian perturbations of 0.1 standard deviation, attributions at their best scale).
Measured (128 samples): integrated gradients, saliency, DeepLift, gradient SHAP and LRP score deletion 0.00 and
insertion 0.45-0.52 on `digits` and `digits-control`, 0.00-0.15 and 0.53-0.58 on the tabular toys (except saliency
on the control toy: 0.89 and 0.99, since a gradient's sign is not the sign of a contribution when inputs take
both signs); a random attribution 0.89-1.11; the reversed integrated gradients at least 1.8. Maps shaped by the
input alone beat a random order (an edge detector 0.34-0.41 and 0.55-0.59 on the digits, the input itself 0.24-0.46
and 0.53-0.64): deletion curves reward them, which is why L203 checks sanity too. 0.8 fails an attribution barely
better than a random order.
Baseline: the parameter `baseline` (as in L201; default `zero`) sets what deleted elements are set to (and the
attributions' reference); the evidence names it.
Interval: each ratio carries a 95% percentile-bootstrap interval over the `curve_samples` samples (500 resamples,
seeded): every sample's area above its baseline probability is computed once, for the attribution order and for
the random orders (averaged), and each resample takes the ratio of their means, paired per sample, with the same
cap. The random orders themselves are not redrawn. A verdict whose interval straddles `max_auc_ratio` is marked
uncertain.
""",
    fix="""
Choose another attribution method (`method`), more integration steps, or a baseline that means "absent" for these
inputs; if no method is faithful, rely on interventions (L201's flip rate, L202, L207) rather than attributions.
""",
    references=(
        "Petsiuk, Das, Saenko (2018). RISE: Randomized Input Sampling for Explanation of Black-box Models. BMVC.",
        "Samek, Binder, Montavon, Lapuschkin, Müller (2017). Evaluating the Visualization of What a Deep "
        "Neural Network Has Learned. IEEE TNNLS 28(11).",
        "Yeh, Hsieh, Suggala, Inouye, Ravikumar (2019). On the (In)fidelity and Sensitivity of Explanations. NeurIPS.",
    ),
)
RULE = RuleDefinition("L204", "attribution-faithfulness", "warning", DOCS)


@dataclass(frozen=True)
class AttributionFaithfulnessParams(BaselineParams):
    max_auc_ratio: float = param(0.8, low=0.0, doc="fail when the attribution order's deletion area over the "
                                                   "random order's (or the random insertion area over the "
                                                   "attribution's) exceeds this; 1 is no better than random; "
                                                   "areas above the baseline's probability")
    method: str = param("integrated_gradients", choices=METHODS, doc="captum attribution method")
    n_steps: int = param(32, low=2, doc="integration steps (integrated gradients, gradient SHAP)")
    samples: int = param(512, low=2, doc="samples attributed (seeded subset; the same as L201's by default)")
    curve_samples: int = param(128, low=2, doc="of those, samples whose curves are measured")
    steps: int = param(16, low=2, doc="points of each curve (fractions of the input removed or restored)")
    random_orders: int = param(3, low=1, doc="random orders averaged for the reference curves")
    top_inputs: int = param(10, low=1, doc="input elements with the largest mean attribution, listed")


class AttributionFaithfulnessEvidence(TypedDict, total=False):
    """The evidence of L204's findings (each finding holds some of these keys)."""

    baseline: dict
    attribution_reliable: bool
    attribution_sanity: dict
    curves: list
    deletion_area: float
    deletion_area_random: float
    infidelity: float
    infidelity_random_attribution: float
    insertion_area: float
    insertion_area_random: float
    method: str
    samples: int
    top_inputs: list


def _cost(sizes: Sizes, params: AttributionFaithfulnessParams) -> Cost:
    """The shared attributions, then deletion and insertion curves (``steps`` + 1 points each) of ``curve_samples``
    samples for the attribution order and ``random_orders`` random ones."""
    curve = sizes.n(min(params.curve_samples, params.samples))
    return (attributions(sizes, params.method, params.n_steps, params.samples)
            + forwards(sizes, curve, 2 * (params.steps + 1) * (1 + params.random_orders)) + uses("attribution_sanity"))


COST = RuleCost(_cost, reduce="samples")


@register("attribution_faithfulness", AttributionFaithfulnessParams, needs=("classification", "real_inputs"), rule=RULE,
          evidence=AttributionFaithfulnessEvidence, cost=COST)
def attribution_faithfulness(context: AuditContext, rule) -> list[Measurement]:
    params: AttributionFaithfulnessParams = rule.params
    baseline = input_baseline(context, params)
    indices, attributions = predicted_attributions(context, params.method, params.n_steps, params.samples, baseline)
    keep = torch.arange(min(params.curve_samples, len(indices)))
    inputs, targets = context.data.inputs[indices[keep]], context.predictions[indices[keep]]
    chosen = attributions[keep]
    reference = None if baseline.is_zero else baseline.fill(inputs)  # what deleted elements are set to

    def curves(scores: torch.Tensor):
        return perturbation_curves(context.model, inputs, targets, scores, params.steps, reference,
                                   batch_size=context.batch_size, device=context.device)

    ranked = curves(chosen)  # signed: the evidence *for* the predicted class goes first
    randoms = [curves(random_scores(chosen, context.seed + k)) for k in range(params.random_orders)]
    random_deletion = sum(c.deletion_excess for c in randoms) / len(randoms)
    random_insertion = sum(c.insertion_excess for c in randoms) / len(randoms)
    deletion_ratio = _ratio(ranked.deletion_excess, random_deletion, larger_is_better=False)
    insertion_ratio = _ratio(ranked.insertion_excess, random_insertion, larger_is_better=True)
    noise_scores = random_scores(chosen, context.seed)
    fidelity = {"infidelity": infidelity(context.model, inputs, targets, chosen, seed=context.seed,
                                         device=context.device),
                "infidelity_random_attribution": infidelity(context.model, inputs, targets, noise_scores,
                                                            seed=context.seed, device=context.device)}
    trust = reliability(context, params.method)
    evidence = {"method": params.method, "samples": len(keep), "baseline": baseline.describe(), **fidelity,
                "deletion_area": ranked.deletion_excess, "deletion_area_random": random_deletion,
                "insertion_area": ranked.insertion_excess, "insertion_area_random": random_insertion,
                "curves": _table(ranked, randoms[0]), "top_inputs": _top_inputs(context, attributions,
                                                                               params.top_inputs), **trust}
    findings = []
    for metric, value, what in (("deletion_auc_ratio", deletion_ratio, "deleting"),
                                ("insertion_auc_ratio", insertion_ratio, "restoring")):
        interval = _ratio_interval(ranked, randoms, insertion=what == "restoring", seed=context.seed)
        faster = "faster" if value < 1 else "no faster"
        findings.append(Measurement(
            f"{what} the top-attributed inputs first moves the predicted class {faster} than a random order "
            f"({metric.replace('_', ' ')} {value:.2f}; {params.method})" + unreliable_suffix(trust),
            metric=metric, value=value, threshold=params.max_auc_ratio, evidence=evidence, interval=interval,
        ))
    return findings


def _ratio_interval(ranked: Curves, randoms: list[Curves], insertion: bool, seed: int) -> Interval | None:
    """Bootstrap interval over the samples of the deletion (or insertion) area ratio: per-sample areas of the
    attribution order and of the random orders' mean, resampled in pairs, each resample's ratio by :func:`_ratio`."""
    def areas(curves: Curves) -> np.ndarray:
        per_sample = curves.insertion_excess_per_sample if insertion else curves.deletion_excess_per_sample
        return per_sample.double().numpy()

    ours = areas(ranked)
    random = np.mean([areas(curves) for curves in randoms], axis=0)
    return bootstrap(lambda idx: _ratio(float(ours[idx].mean()), float(random[idx].mean()), larger_is_better=insertion),
                     len(ours), seed=seed)


#: A ratio is capped here: the attribution order does at least this many times worse than a random one.
WORST = 10.0


def _ratio(ours: float, random: float, larger_is_better: bool) -> float:
    """How the attribution order's area compares with the random order's, 0 (better than any order) to ``WORST``;
    1 is no better than random. Deletion areas are better small (a curve that dips below its end even has a
    negative area), insertion areas better large (a curve that never rises above its start has none)."""
    if random <= 1e-9:
        return 1.0  # the output does not move under either order
    if larger_is_better:
        return WORST if ours <= random / WORST else random / ours
    return min(WORST, max(0.0, ours / random))


def _table(ranked, random) -> list[dict]:
    """The mean curves, one row per fraction of the input removed or restored."""
    rows = []
    ours, theirs = ranked.mean_curves(), random.mean_curves()
    for i, fraction in enumerate(ours["fraction"]):
        rows.append({"fraction": fraction, "deletion": ours["deletion"][i], "deletion_random": theirs["deletion"][i],
                     "insertion": ours["insertion"][i], "insertion_random": theirs["insertion"][i]})
    return rows


def _top_inputs(context: AuditContext, attributions: torch.Tensor, count: int) -> list[dict]:
    """The input elements with the largest mean absolute attribution (named by feature for tabular data)."""
    mean = attributions.abs().mean(0)
    flat = mean.flatten()
    top = flat.argsort(descending=True)[:count].tolist()
    names = context.data.feature_names
    rows = []
    for index in top:
        position = [int(i) for i in torch.unravel_index(torch.tensor(index), mean.shape)]
        element = names[index] if names and mean.dim() == 1 else f"input[{', '.join(map(str, position))}]"
        rows.append({"element": element, "index": position, "mean_abs_attribution": float(flat[index])})
    return rows
