"""L203: attribution sanity by cascading model-parameter randomisation (Adebayo et al. 2018).

One finding per attribution method the audit relies on: this rule's ``method`` and the method of every other
attribution-based rule of the audit (L201, L204). Those rules read the same result (see
:mod:`.attribution_common`) and mark their findings unreliable when it fails, whatever the rule order.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..context import AuditContext
from ..findings import Finding
from ..techniques.attribution import METHODS
from .attribution_common import SANITY_CHECK, sanity_result
from .registry import param, register

#: Checks whose rules attribute with a ``method`` parameter, whose method this rule therefore checks too.
ATTRIBUTION_CHECKS = ("forbidden_input", "attribution_faithfulness")


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


@register(SANITY_CHECK, AttributionSanityParams, needs=("classification", "real_inputs"))
def attribution_sanity(context: AuditContext, rule) -> list[Finding]:
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
        findings.append(Finding(
            rule.id, rule.severity, "fail" if failed else "pass",
            f"{method} attributions keep a rank correlation of {value:.2f} with the original once every "
            f"parameter of the model is randomised ({result.steps[-1].randomized} modules, from the output down); "
            f"{verdict}",
            metric="rank_correlation", value=value, threshold=params.max_rank_correlation,
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
