"""L203: attribution sanity by cascading model-parameter randomisation (Adebayo et al. 2018).

One finding per attribution method the audit relies on: this rule's ``method`` and the method of every other
attribution-based rule of the audit (L201, L204). Those rules read the same result (see
:mod:`.attribution_common`) and mark their findings unreliable when it fails, whatever the rule order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

from ..context import AuditContext
from ..cost import Cost, RuleCost, Sizes, sanity_cascade
from ..findings import Measurement
from ..techniques.attribution import METHODS
from ..techniques.uncertainty import bootstrap_mean
from .attribution_common import SANITY_CHECK, sanity_result
from .registry import RuleDefinition, RuleDocs, param, register

#: Checks whose rules attribute with a ``method`` parameter, whose method this rule therefore checks too.
ATTRIBUTION_CHECKS = ("forbidden_input", "attribution_faithfulness")


DOCS = RuleDocs(
    summary="The attributions do not depend on the model: attribution-based findings cannot be trusted.",
    what="""
Each attribution method the audit relies on (this rule's `method` and the `method` of every attribution-based
rule of the audit: L201, L204) is checked by cascading model-parameter randomisation: the parameters of a copy of
the model are re-drawn module by module, from the output layer down, and after each step the attributions of
`samples` audit samples (to their original predicted classes) are compared with the original ones by the Spearman
rank correlation of their absolute values, per sample, over the input elements that differ from the baseline. One
finding per method: it fails when the correlation once the whole model is random exceeds `max_rank_correlation`;
the evidence holds the whole cascade. When it fails, the attribution-based findings of the audit say so in their
evidence (`attribution_reliable: false`, `attribution_sanity.status: "failed"`) and message, whatever the order
the rules run in.
""",
    why="""
An attribution map can look plausible and still not depend on the model: an edge detector applied to the input
produces convincing saliency maps of any image. A finding built on such attributions (a shortcut, a faithful
explanation) describes the input, not the model, and must not be relied on.
""",
    how="""
Cascading model-parameter randomisation (Adebayo et al. 2018): Linear, Conv and Embedding modules are
re-initialised with their own initialisation, other parameters shuffled; at most `max_evaluations` steps of the
cascade are compared, always the first and the last. Elements equal to the baseline are left out of the ranking:
path methods give them 0 whatever the model, which would count as agreement (with them, integrated gradients keep
0.89 on `digits` with every weight random). The verdict reads the end of the cascade: small networks keep high
correlations in early steps legitimately (the tabular toys of the tests keep 0.83-0.98 after randomising only their
16-to-2 output layer, even with plain gradients, because a random readout of trained features still points at the
inputs they depend on). Measured (64 samples, 5 randomisation seeds): once every parameter is random, integrated
gradients, DeepLift, gradient SHAP and LRP keep 0.34-0.42 on `digits` and `digits-control` (the part of the
ranking that comes from the input's own magnitudes), at most 0.44 on the tabular toys and about 0 on sparse parity;
saliency at most 0.16; an edge detector on the input that ignores the model (tests) keeps 1.00 at every step.
0.6 separates them.
A model whose weights were never trained has no learned parameters for the attributions to depend on, and the
rule may fail on it correctly: on the ResNet-18 shape with seeded random weights (`benchmarks/resnet18_shaped.py`,
smooth random images, 16 samples) integrated gradients keep 0.60-0.62 at every step of the cascade, already after
randomising the output layer alone, the same 0.60 as between two independently seeded ResNet-18s. It is the input
and the architecture that rank them: `|input - baseline|` alone ranks 0.58 with them, and plain gradients of two
random ResNet-18s still agree 0.38 (the stride and padding pattern). A trained model's attributions are judged
against the same input part, so on images with strong contrasts in `|input - baseline|` read the cascade, and check
saliency (no input factor) beside integrated gradients.
Interval: the final correlation is a mean of per-sample correlations, so it carries a 95% percentile-bootstrap
interval over the attributed samples (500 resamples of the per-sample correlations already computed, seeded; the
randomised model itself is drawn once, with the audit's seed). A verdict whose interval straddles
`max_rank_correlation` is marked uncertain.
""",
    fix="""
Do not rely on the failing method: choose another one (`method` of L201 and L204), check its sanity, and re-audit.
Findings that do not rest on attributions (L201's flip rate, L202, L207) stand.
""",
    references=(
        "Adebayo, Gilmer, Muelly, Goodfellow, Hardt, Kim (2018). Sanity Checks for Saliency Maps. NeurIPS.",
        "Kindermans et al. (2019). The (Un)reliability of Saliency Methods. In Explainable AI, Springer.",
    ),
)
RULE = RuleDefinition("L203", "attribution-sanity", "warning", DOCS)


@dataclass(frozen=True)
class AttributionSanityParams:
    max_rank_correlation: float = param(0.6, low=0.0, high=1.0,
                                        doc="fail when attributions stay more rank-correlated than this with the "
                                            "original once the whole model is randomised")
    method: str = param("integrated_gradients", choices=METHODS, doc="attribution method checked (with the "
                                                                      "methods of the audit's other rules)")
    n_steps: int = param(32, low=2, doc="integration steps (integrated gradients, gradient SHAP)")
    samples: int = param(64, low=2, doc="samples attributed (seeded subset)")
    max_evaluations: int = param(6, low=2, doc="cascade steps at which attributions are compared")


class AttributionSanityEvidence(TypedDict, total=False):
    """The evidence of L203's findings (each finding holds some of these keys)."""

    attribution_method: str
    cascade: list
    largest_rank_correlation: float
    samples: int
    used_by: list


def _cost(sizes: Sizes, params: AttributionSanityParams) -> Cost:
    """Attributions of ``samples`` samples on the model and after each randomisation step (shared)."""
    return sanity_cascade(sizes, params.samples, params.n_steps, params.max_evaluations)


COST = RuleCost(_cost, reduce="samples")


@register(SANITY_CHECK, AttributionSanityParams, needs=("classification", "real_inputs"), rule=RULE,
          evidence=AttributionSanityEvidence, cost=COST)
def attribution_sanity(context: AuditContext, rule) -> list[Measurement]:
    params: AttributionSanityParams = rule.params
    methods = [params.method]
    for other in context.rules:
        if other.check.name in ATTRIBUTION_CHECKS and other.params.method not in methods:
            methods.append(other.params.method)
    findings = []
    for method in methods:
        _, result = sanity_result(context, method)
        value = result.final_correlation
        failed = value > params.max_rank_correlation
        verdict = ("they survive randomising the model: attributions by this method are not reliable" if failed
                   else "they change with the model")
        findings.append(Measurement(
            f"{method} attributions keep a rank correlation of {value:.2f} with the original once every "
            f"parameter of the model is randomised ({result.steps[-1].randomized} modules, from the output down); "
            f"{verdict}",
            metric="rank_correlation", value=value, threshold=params.max_rank_correlation,
            interval=bootstrap_mean(result.steps[-1].per_sample, seed=context.seed),
            evidence={
                "attribution_method": method, "samples": result.samples,
                "largest_rank_correlation": result.max_correlation,
                "cascade": [{"randomized_down_to": step.module, "modules_randomized": step.randomized,
                             "rank_correlation": step.rank_correlation} for step in result.steps],
                "used_by": [other.id for other in context.rules
                            if other.check.name in ATTRIBUTION_CHECKS and other.params.method == method],
            },
        ))
    return findings
