"""What the representation rules (L205 probes, L206 dissection) share: per-sample activations of every audited
layer on a seeded subset of the audit data, computed once per audit."""

from __future__ import annotations

import torch

from ..context import Artifact, AuditContext
from ..techniques.circuits import logits_at
from .decomposition_common import pooled_activations

OUTPUT = "output"


def sampled_activations(context: AuditContext, samples: int,
                        pool: str = "mean") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(indices, {layer: (samples, units)})``: each unit's activation averaged over its positions (or taken at
    the ``first`` or ``last`` one), for the hidden layers, plus ``"output"``: the model's outputs as (samples,
    outputs), one column for a regression model with one number per sample (for a next-token model, at the
    behaviour's position)."""
    return context.sample_indices(samples), context.shared(SAMPLED_ACTIVATIONS, samples, pool)


def _sampled(context: AuditContext, samples: int, pool: str) -> dict[str, torch.Tensor]:
    indices, pooled = pooled_activations(context, samples, pool)
    activations = dict(pooled)
    position = context.behaviour.position if context.behaviour is not None else -1
    output = logits_at(context.outputs[indices], position)
    activations[OUTPUT] = output.reshape(output.shape[0], -1)  # (samples,) for a one-number regression output
    return activations


SAMPLED_ACTIVATIONS: Artifact[dict[str, torch.Tensor]] = Artifact("per_sample_activations", _sampled)
