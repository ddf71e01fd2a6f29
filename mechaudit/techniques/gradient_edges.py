"""Edges between two layers whatever lies between them (attention, LayerNorm, residual streams), by autograd.

Edge attribution patching (Syed, Rager, Conmy 2023) scores ``u -> v`` as the first-order change of the behaviour
``m`` when only ``u``'s change reaches ``v``: ``(J (z_u_ref - z_u)) . dm/dz_v``, where ``J`` is the Jacobian of
``v``'s activation with respect to the upstream layer's activation on the clean run (LayerNorm and attention
linearised at the clean point, as in every gradient-based attribution through them). Both sides of the product
come from the graph kept from the clean backward pass; per sample, one of

* a vector-Jacobian product per downstream unit ``v``: ``g_v = J^T (dm/dz_v restricted to v)``, then
  ``score(u, v) = (z_u_ref - z_u) . g_v`` for every ``u`` at once; or
* a Jacobian-vector product per upstream unit ``u`` (the double-backward trick: the gradient of a VJP with
  respect to its cotangent), then ``score(u, v) = (J (z_u_ref - z_u)) . dm/dz_v`` for every ``v`` at once,

whichever side has fewer units (the VJPs when an operation on the path has no double backward). Both give the
same numbers. Pairs with more than ``max_passes`` units on both sides are screened: :func:`screened_gradient_edges`
scores the edges into the ``max_passes`` downstream units the caller chose (by node score), one VJP each, from
every upstream unit. For an additive
stream (``x + attn(x)``) this is exactly the direct-path score of a head's term ``W_O[:, u] z_u`` through the
residual stream.
"""

from __future__ import annotations

import torch

from ..model_view import Layer, from_units_view, units_view

MAX_PASSES = 128


class NoDoubleBackward(RuntimeError):
    """An operation between the two layers has no double backward, and the downstream side is too wide for one
    VJP per unit: the caller scores the pair screened (:func:`screened_gradient_edges`), not as unconnected."""


def gradient_edges(upstream: Layer, upstream_out: torch.Tensor, upstream_delta: torch.Tensor, layer: Layer,
                   out: torch.Tensor, grad: torch.Tensor, max_passes: int = MAX_PASSES) -> torch.Tensor | None:
    """Scores (upstream units, ``layer`` units), summed over samples of |per-sample effect|, or None when the
    pair has too many units on both sides or ``layer``'s activation does not depend on the upstream one. Raises
    :class:`NoDoubleBackward` when the JVPs this pair needs are unavailable and ``layer`` is wider than
    ``max_passes``.

    ``upstream_out``/``out``: the two activations on the clean run (graph attached); ``upstream_delta``: the
    upstream activation's reference minus clean value; ``grad``: dm/d``out``."""
    if min(upstream.size, layer.size) > max_passes or not (upstream_out.requires_grad and out.requires_grad):
        return None
    args = (upstream, upstream_out, upstream_delta, layer, out, grad)
    if layer.size > upstream.size:
        try:
            return _by_upstream_unit(*args)
        except RuntimeError as error:  # an operation on the path without a double backward
            if layer.size > max_passes:
                raise NoDoubleBackward(str(error).split("\n")[0]) from error
    return _by_downstream_unit(*args)


def screened_gradient_edges(upstream: Layer, upstream_out: torch.Tensor, upstream_delta: torch.Tensor, layer: Layer,
                             out: torch.Tensor, grad: torch.Tensor, units: list[int]) -> torch.Tensor | None:
    """Scores (upstream units, ``len(units)``): the edges into ``units`` of ``layer`` only (one VJP each), or None
    when ``layer``'s activation does not depend on the upstream one."""
    if not (upstream_out.requires_grad and out.requires_grad):
        return None
    return _by_downstream_unit(upstream, upstream_out, upstream_delta, layer, out, grad, units)


def _by_downstream_unit(upstream: Layer, upstream_out: torch.Tensor, upstream_delta: torch.Tensor, layer: Layer,
                        out: torch.Tensor, grad: torch.Tensor, units: list[int] | None = None) -> torch.Tensor | None:
    grad_units = units_view(grad, layer)
    delta_units = units_view(upstream_delta, upstream)
    columns = []
    for unit in range(layer.size) if units is None else units:
        only = torch.zeros_like(grad_units)
        only[:, unit] = grad_units[:, unit]
        (through_v,) = torch.autograd.grad(out, upstream_out, grad_outputs=from_units_view(only, grad, layer),
                                           retain_graph=True, allow_unused=True)
        if through_v is None:
            return None
        columns.append((delta_units * units_view(through_v.detach(), upstream)).sum(2).abs().sum(0))
    return torch.stack(columns, dim=1)


def _by_upstream_unit(upstream: Layer, upstream_out: torch.Tensor, upstream_delta: torch.Tensor, layer: Layer,
                      out: torch.Tensor, grad: torch.Tensor) -> torch.Tensor | None:
    cotangent = torch.zeros_like(out, requires_grad=True)
    (vjp,) = torch.autograd.grad(out, upstream_out, grad_outputs=cotangent, create_graph=True, retain_graph=True,
                                 allow_unused=True)
    if vjp is None:
        return None
    delta_units = units_view(upstream_delta, upstream)
    grad_units = units_view(grad, layer)
    rows = []
    for unit in range(upstream.size):
        only = torch.zeros_like(delta_units)
        only[:, unit] = delta_units[:, unit]
        (change,) = torch.autograd.grad(vjp, cotangent, grad_outputs=from_units_view(only, upstream_delta, upstream),
                                        retain_graph=True)
        rows.append((units_view(change.detach(), layer) * grad_units).sum(2).abs().sum(0))
    return torch.stack(rows)
