"""Edge scores read off a Linear or Conv layer's weights, as matrix products with a bound on temporary memory.

For a layer ``v = W x`` whose input splits into the upstream units' parts ``x_u`` (only unit-wise functions,
pooling and flattening between the layers), the edge ``u -> v`` scores ``sum_n |(W_vu dx_u) . g_v|`` with ``dx``
the reference-minus-clean input and ``g`` the behaviour's gradient at ``v`` (:mod:`.circuits`). Per kind of layer:

* Linear, one input feature per unit: ``|W|^T * (|dx|^T |g|)``, one matrix product (the absolute value of a
  product of scalars is the product of their absolute values);
* Linear, several features per unit (a flattened feature map): the per-sample contribution ``W_vu . dx_u`` by
  ``einsum``, in chunks of upstream units;
* Linear applied at every token (a transformer MLP's down projection reading its neurons' GELU outputs):
  ``|W_vu| * sum_n |sum_t dx_u[n, t] g_v[n, t]|``, one batched matrix product per chunk of samples;
* Conv2d: ``(W_vu * dx_u) . g_v = sum_k W_vu[k] (sum_p g_v[p] dx_u[p + k])``: the inner sum is a per-sample weight
  gradient, one batched matrix product of the gradient with the unfolded input (``F.unfold``), in chunks of
  samples and upstream channels;
* other convolutions (1-D, 3-D, string padding): the per-unit contributions by a grouped convolution, in chunks.

Every chunk holds at most about ``chunk_elements`` numbers (default 2^24: 64 MiB in float32), whatever the width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import linear_maps

CHUNK_ELEMENTS = 2 ** 24


def weight_edge_scores(module: nn.Module, delta: torch.Tensor, grad: torch.Tensor,
                       chunk_elements: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """Scores (upstream units, layer units) summed over samples. ``delta``: the layer input's reference-minus-clean
    value split by upstream unit (:func:`~.unit_split.split_input`), (samples, units, features) or, per token,
    (samples, units, *positions, 1) for Linear, (samples, channels, *spatial) for Conv; ``grad``: dm/d(layer
    output) as (samples, layer units, positions). Computed in the wider of the two dtypes (a bfloat16 model's
    activations with a float32 behaviour's gradient)."""
    dtype = torch.promote_types(delta.dtype, grad.dtype)
    delta, grad = delta.to(dtype), grad.to(dtype)
    if linear_maps.is_linear(module) and delta.dim() > 3:
        return _linear_per_position(linear_maps.weight(module).detach(), delta.flatten(2, -2), grad, chunk_elements)
    if linear_maps.is_linear(module):
        return _linear(linear_maps.weight(module).detach(), delta, grad[..., 0], chunk_elements)
    if isinstance(module, nn.Conv2d) and not isinstance(module.padding, str):
        return _conv2d(module, delta, grad, chunk_elements)
    return _grouped(module, delta, grad, chunk_elements)


def input_edge_scores(module: nn.Module, delta: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Scores (layer units,) of the edges from one input region: ``delta`` is the model input's change restricted to
    the region; the region's channels together are one node, so their contributions add up before the ``|.|``."""
    weight = linear_maps.weight(module).detach() if linear_maps.is_linear(module) else module.weight.detach()
    delta = delta.to(weight.dtype)  # the model input stays float32 when the model runs in a lower precision
    if linear_maps.is_linear(module):
        change = delta.reshape(delta.shape[0], -1) @ weight.T
        return (change * grad[..., 0]).abs().sum(0)
    conv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[delta.dim()]
    change = conv(delta, weight, None, module.stride, module.padding, module.dilation, module.groups)
    return (change.flatten(2) * grad).sum(2).abs().sum(0)


def _linear(weight: torch.Tensor, delta: torch.Tensor, grad: torch.Tensor, chunk_elements: int) -> torch.Tensor:
    n, units, features = delta.shape
    weight = weight.reshape(weight.shape[0], units, features).to(delta.dtype)
    if features == 1:
        return weight[..., 0].abs().T * (delta[..., 0].abs().T @ grad.abs())
    scores = torch.empty(units, weight.shape[0], dtype=delta.dtype, device=delta.device)
    step = max(1, chunk_elements // max(1, n * weight.shape[0] * features))
    magnitude = grad.abs()
    for start in range(0, units, step):
        part = slice(start, start + step)
        contribution = torch.einsum("vup,nup->nuv", weight[:, part], delta[:, part])
        scores[part] = torch.einsum("nuv,nv->uv", contribution.abs(), magnitude)
    return scores


def _linear_per_position(weight: torch.Tensor, delta: torch.Tensor, grad: torch.Tensor,
                         chunk_elements: int) -> torch.Tensor:
    """``delta`` (samples, units, positions, 1): one input feature per unit at every position (token)."""
    n, units, _, features = delta.shape
    if features != 1 or weight.shape[1] != units:
        raise ValueError(f"a Linear layer read at every position splits one feature per unit, not {features}")
    per_position = delta[..., 0]
    totals = torch.zeros(units, weight.shape[0], dtype=delta.dtype, device=delta.device)
    step = max(1, chunk_elements // max(1, units * weight.shape[0]))
    for start in range(0, n, step):
        part = slice(start, start + step)
        totals += torch.bmm(per_position[part], grad[part].transpose(1, 2).to(delta.dtype)).abs().sum(0)
    return weight.abs().T.to(delta.dtype) * totals


def _conv2d(module: nn.Conv2d, delta: torch.Tensor, grad: torch.Tensor, chunk_elements: int) -> torch.Tensor:
    weight = module.weight.detach().to(delta.dtype)
    out_channels, channels = weight.shape[:2]
    kernel = weight.shape[2] * weight.shape[3]
    n, positions = delta.shape[0], grad.shape[2]
    scores = torch.zeros(channels, out_channels, dtype=delta.dtype, device=delta.device)
    channel_step = max(1, min(channels, chunk_elements // max(1, out_channels * kernel + kernel * positions)))
    for c in range(0, channels, channel_step):
        part = slice(c, c + channel_step)
        width = len(range(channels)[part])
        per_sample = width * kernel * (out_channels + positions)
        sample_step = max(1, chunk_elements // max(1, per_sample))
        w = weight[:, part].reshape(out_channels, width, kernel)
        for s in range(0, n, sample_step):
            columns = F.unfold(delta[s:s + sample_step, part], weight.shape[2:], module.dilation, module.padding,
                               module.stride)  # (b, width * kernel, positions)
            gradient = torch.bmm(grad[s:s + sample_step], columns.transpose(1, 2))  # (b, V, width * kernel)
            effect = (gradient.view(-1, out_channels, width, kernel) * w).sum(-1)  # (b, V, width)
            scores[part] += effect.abs().sum(0).T
    return scores


def _grouped(module: nn.Module, delta: torch.Tensor, grad: torch.Tensor, chunk_elements: int) -> torch.Tensor:
    """Per upstream channel, its contribution to every output channel by one grouped convolution."""
    weight = module.weight.detach().to(delta.dtype)  # (V, U, *k)
    out_channels, channels = weight.shape[:2]
    conv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[delta.dim()]
    scores = torch.zeros(channels, out_channels, dtype=delta.dtype, device=delta.device)
    per_sample = out_channels * grad.shape[2]
    sample_step = max(1, chunk_elements // max(1, per_sample * channels))
    channel_step = max(1, chunk_elements // max(1, per_sample * sample_step))
    for c in range(0, channels, channel_step):
        part = slice(c, c + channel_step)
        width = len(range(channels)[part])
        grouped = weight[:, part].transpose(0, 1).reshape(width * out_channels, 1, *weight.shape[2:])
        for s in range(0, delta.shape[0], sample_step):
            out = conv(delta[s:s + sample_step, part], grouped, None, module.stride, module.padding,
                       module.dilation, groups=width)
            out = out.reshape(out.shape[0], width, out_channels, -1)
            scores[part] += torch.einsum("nuvp,nvp->nuv", out, grad[s:s + sample_step]).abs().sum(0)
    return scores
