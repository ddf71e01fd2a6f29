"""Reviewer evidence the decomposition rules attach to their findings: top-activating exemplars of units or
dictionary features, and activation maximisation of dictionary features for image models (drawn by
:mod:`mechaudit.report.decomposition_figures`)."""

from __future__ import annotations

import torch

from ..context import AuditContext
from ..model_view import Layer
from ..techniques.activation_max import maximize_activation
from ..techniques.exemplars import top_exemplars
from ..techniques.sae import Dictionary

MAX_STEPS = 64  # activation maximisation steps per feature: enough to raise the objective, cheap on a CPU


def exemplars(context: AuditContext, indices: torch.Tensor, scores: torch.Tensor, components: list[int],
              names: list[str], top: int = 8) -> list[dict]:
    """Top-activating audit samples of the chosen columns of ``scores`` (samples of ``indices``, components);
    image tiles or table rows; nothing for token inputs."""
    inputs = context.data.inputs[indices]
    if not components or not inputs.is_floating_point():
        return []
    labels = context.data.labels[indices] if context.data.labels is not None else None
    return top_exemplars(scores, inputs, labels, components, names, top=top,
                         class_names=list(context.class_names) or None, feature_names=context.data.feature_names)


def maximised_features(context: AuditContext, layer: Layer, dictionary: Dictionary, features: list[int]) -> list[dict]:
    """Inputs optimised to activate each feature's direction (image models only)."""
    shape = tuple(context.data.inputs.shape[1:])
    if len(shape) != 3 or not context.data.inputs.is_floating_point():
        return []
    low, high = float(context.data.inputs.min()), float(context.data.inputs.max())
    module = dict(context.model.named_modules())[layer.name]
    rows = []
    for feature in features:
        result = maximize_activation(context.model, module, 0, shape, direction=dictionary.decoder[feature],
                                     steps=MAX_STEPS, seed=context.seed, device=context.device,
                                     value_range=(low, high))
        rows.append({"component": dictionary.address(feature), **result})
    return rows
