"""What the attribution-based rules share: attributions to the predicted class, computed once per method, and the
verdict of the attribution sanity rule (L203) on that method, whichever rule asks first.

A rule that relies on attributions (L201, L204) puts :func:`reliability` into its evidence:
``attribution_reliable`` (true, false, or null when no sanity rule is part of the audit) and
``attribution_sanity`` (``status`` passed / failed / not checked, the rank correlation, the threshold, the rule).
"""

from __future__ import annotations

from typing import Any

import torch

from ..context import Artifact, AuditContext
from ..techniques.attribution import attribute
from ..techniques.baselines import Baseline
from ..techniques.randomization import RandomizationResult, cascading_randomization

SANITY_CHECK = "attribution_sanity"


def predicted_attributions(context: AuditContext, method: str, n_steps: int, samples: int,
                           baseline: Baseline | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(indices, attributions)``: attributions to the predicted class of a seeded subset of ``samples``, relative
    to ``baseline`` (default zero)."""
    chosen = None if baseline is None or baseline.is_zero else (baseline.kind, baseline.value, baseline.sigma)
    return context.sample_indices(samples), context.shared(ATTRIBUTIONS, method, n_steps, samples, chosen)


def _attributions(context: AuditContext, method: str, n_steps: int, samples: int,
                  baseline: tuple[str, float, float] | None) -> torch.Tensor:
    indices = context.sample_indices(samples)
    inputs = context.data.inputs[indices]
    reference = None if baseline is None else Baseline(*baseline, context.data.inputs, context.seed).fill(inputs)
    return attribute(context.model, inputs, context.predictions[indices], context.device, method,
                     baseline=reference, n_steps=n_steps, seed=context.seed, internal_batch_size=context.batch_size)


def sanity_result(context: AuditContext, method: str) -> tuple[Any, RandomizationResult] | None:
    """``(sanity rule, cascade result)`` for ``method``, computed once per audit with the sanity rule's
    parameters; None when no rule of the audit runs the sanity check."""
    rule = context.rule_for_check(SANITY_CHECK)
    if rule is None:
        return None
    return rule, context.shared(SANITY, method, rule.params)


def _sanity(context: AuditContext, method: str, params: Any) -> RandomizationResult:
    indices = context.sample_indices(params.samples)
    inputs, targets = context.data.inputs[indices], context.predictions[indices]

    def attribute_fn(model, x, t):
        return attribute(model, x, t, context.device, method, n_steps=params.n_steps, seed=context.seed,
                         internal_batch_size=context.batch_size)
    return cascading_randomization(context.model, inputs, targets, attribute_fn, seed=context.seed,
                                   max_evaluations=params.max_evaluations)


#: Attributions to the predicted class of a seeded subset, by (method, n_steps, samples).
ATTRIBUTIONS: Artifact[torch.Tensor] = Artifact("attributions", _attributions)
#: The cascading-randomisation verdict on a method, by (method, the sanity rule's parameters).
SANITY: Artifact[RandomizationResult] = Artifact("attribution_sanity", _sanity)


def reliability(context: AuditContext, method: str) -> dict[str, Any]:
    """Evidence keys saying whether attributions by ``method`` passed the sanity check (see the module doc)."""
    found = sanity_result(context, method)
    if found is None:
        return {"attribution_reliable": None,
                "attribution_sanity": {"status": "not checked", "method": method,
                                       "note": "no attribution sanity rule (L203) is part of this audit"}}
    rule, result = found
    threshold = rule.params.max_rank_correlation
    passed = result.final_correlation <= threshold
    note = ("the attributions change when the model's parameters are randomised" if passed else
            "the attributions survive randomising the model's parameters: they may show the input rather than "
            "the model, so findings based on them are not reliable")
    return {"attribution_reliable": passed,
            "attribution_sanity": {"status": "passed" if passed else "failed", "method": method, "rule": rule.id,
                                   "rank_correlation": result.final_correlation, "threshold": threshold,
                                   "note": note}}


def unreliable_suffix(evidence: dict[str, Any]) -> str:
    """A message suffix for a finding whose attributions failed the sanity check."""
    return (" [attributions unreliable: they failed the sanity check]"
            if evidence.get("attribution_reliable") is False else "")
