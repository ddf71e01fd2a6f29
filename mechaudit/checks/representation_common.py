"""What the representation rules (L205 probes, L206 dissection) share: per-sample activations of every audited
layer on a seeded subset of the audit data, computed once per audit."""

from __future__ import annotations

import torch

from ..activations import per_sample_activations
from ..context import AuditContext
from ..techniques.circuits import logits_at

OUTPUT = "output"


def sampled_activations(context: AuditContext, samples: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(indices, {layer: (samples, units)})``: each unit's activation averaged over its positions, for the hidden
    layers, plus ``"output"``: the model's outputs (for a next-token model, at the behaviour's position)."""
    indices = context.sample_indices(samples)

    def compute() -> dict[str, torch.Tensor]:
        layers = context.view.hidden_layers
        activations = per_sample_activations(context.view, layers, context.data.inputs[indices], context.batch_size,
                                             context.device)
        position = context.behaviour.position if context.behaviour is not None else -1
        activations[OUTPUT] = logits_at(context.outputs[indices], position).flatten(1)
        return activations
    return indices, context.artifact(f"per_sample_activations:{samples}", compute)
