"""What the decomposition rules (D102-D106) share: per-sample activations of every hidden layer on a seeded subset
of the audit data, pooled over positions by the mean or by the max (a unit's strongest response anywhere in the
sample), computed once per audit (the mean-pooled ones also serve L205 and L206, see :mod:`.representation_common`);
and the labels components are read against."""

from __future__ import annotations

import torch

from ..activations import per_sample_activations
from ..context import Artifact, AuditContext

CLASSES = "classes"


def pooled_activations(context: AuditContext, samples: int,
                       pool: str = "mean") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(indices, {layer: (samples, units)})`` for the hidden layers, pooled over positions by ``pool``."""
    return context.sample_indices(samples), context.shared(POOLED_ACTIVATIONS, samples, pool)


def _pooled(context: AuditContext, samples: int, pool: str) -> dict[str, torch.Tensor]:
    return per_sample_activations(context.view, context.view.hidden_layers,
                                  context.data.inputs[context.sample_indices(samples)], context.batch_size,
                                  context.device, pool=pool)


POOLED_ACTIVATIONS: Artifact[dict[str, torch.Tensor]] = Artifact("pooled_activations", _pooled)


def reading_labels(context: AuditContext, source: str) -> tuple[torch.Tensor, list[str]]:
    """``(labels per sample, label names)``: the task's classes (``"classes"``) or a declared concept's values."""
    if source == CLASSES:
        if context.data.labels is None:
            raise ValueError("the spec declares no labels: set the rule's 'labels' to a declared concept")
        labels = context.data.labels.long()
        return labels, [context.class_name(i) for i in range(int(labels.max()) + 1)]
    if source not in context.data.concepts:
        known = ", ".join(context.data.concepts) or "none"
        raise ValueError(f"no concept '{source}' is declared in [data.concepts] (declared: {known})")
    values = context.data.concepts[source].long()
    levels = values.unique(sorted=True)
    return torch.searchsorted(levels, values), [f"{source}={v}" for v in levels.tolist()]
