"""Gradients of a behaviour with respect to recorded activations only (no parameter gradients)."""

from __future__ import annotations

import torch


class NotDifferentiable(ValueError):
    """The behaviour does not depend differentiably on the audited layers (a forward under ``torch.no_grad``, an
    ``argmax`` or a detached output)."""


def activation_grads(total: torch.Tensor, tensors: list[torch.Tensor],
                     retain_graph: bool = False) -> list[torch.Tensor | None]:
    """``d total / d t`` for each of ``tensors`` (None where ``total`` does not depend on it), computed in one
    backward pass that skips every other leaf (the weights' gradients). Raises :class:`NotDifferentiable` when
    ``total`` has no graph at all: gradient scores of such a behaviour would all be 0, not measured."""
    if not total.requires_grad:
        raise NotDifferentiable("the behaviour does not depend differentiably on the audited layers (its value has "
                                "no gradient: a forward pass under torch.no_grad, an argmax or a detached output?)")
    if not tensors:
        return []
    return list(torch.autograd.grad(total, tensors, retain_graph=retain_graph, allow_unused=True))
