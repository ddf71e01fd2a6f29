"""Exact activation patching of single edges: the ground truth that edge attribution patching approximates.

Patching edge ``u -> v`` replaces only ``u``'s contribution to ``v``'s input by its reference value; everything
downstream is recomputed. Several edges share one forward pass: the batch is repeated once per edge.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import linear_maps
from ..model_view import ModelView, from_units_view, installed, units_view
from .circuits import INPUT, Behaviour, _mean_trace, _Recorder, _split_input


def exact_edge_effects(view: ModelView, edges: list[tuple[str, str]], inputs: torch.Tensor, targets: torch.Tensor,
                       behaviour: Behaviour, reference: torch.Tensor | None = None,
                       regions: dict[str, torch.Tensor] | None = None, batch_size: int = 256,
                       device: torch.device | None = None, edges_per_pass: int = 64) -> dict[tuple[str, str], float]:
    """Summed absolute per-sample change of ``behaviour`` when each edge alone is patched to the reference (the
    quantity :func:`~mechaudit.techniques.circuits.edge_attribution` approximates to first order)."""
    device = device or torch.device("cpu")
    model = view.model
    means = None if reference is not None else _mean_trace(view, inputs, batch_size, device)
    effects = {edge: 0.0 for edge in edges}
    order = {layer.name: i for i, layer in enumerate(view.layers)}
    for start in range(0, inputs.shape[0], batch_size):
        batch = inputs[start:start + batch_size].to(device)
        batch_targets = targets[start:start + batch_size].to(device)
        recorder = _Recorder(view, view.layers, keep_grad=False)
        with recorder.recording(), torch.no_grad():
            base = behaviour(model(batch), batch_targets)
        if reference is not None:
            ref = _Recorder(view, view.layers, keep_grad=False)
            ref_batch = reference[start:start + batch_size].to(device)
            with ref.recording(), torch.no_grad():
                model(ref_batch)
            ref_inputs = ref.inputs
        else:
            ref_batch = means[INPUT].expand_as(batch)
            ref_inputs = {k: v.expand_as(recorder.inputs[k]) for k, v in means["in"].items()}
        for chunk_start in range(0, len(edges), edges_per_pass):
            chunk = edges[chunk_start:chunk_start + edges_per_pass]
            additions = [_edge_addition(view, order, edge, recorder.inputs, ref_inputs, batch, ref_batch, regions)
                         for edge in chunk]
            patched = _patched_forward(view, batch, chunk, additions)
            metric = behaviour(patched.reshape(len(chunk) * batch.shape[0], -1),
                               batch_targets.repeat(len(chunk), *([1] * (batch_targets.dim() - 1))))
            changes = (metric.reshape(len(chunk), batch.shape[0]) - base).abs().sum(1)
            for edge, change in zip(chunk, changes.tolist()):
                effects[edge] += change
    return effects


def _edge_addition(view: ModelView, order: dict[str, int], edge: tuple[str, str], inputs: dict, ref_inputs: dict,
                   batch: torch.Tensor, ref_batch: torch.Tensor, regions: dict | None) -> torch.Tensor:
    """The change of the target unit's output (samples, positions) when only this edge is patched."""
    source, target = edge
    layer, v = view.resolve(target)
    module = view.module(layer)
    if source.startswith(INPUT):
        mask = (regions or {}).get(source, torch.ones(batch.shape[1:])).to(batch.device)
        return _contribution(module, (ref_batch - batch) * mask, v)
    upstream, u = view.resolve(source)
    delta = ref_inputs[layer.name] - inputs[layer.name]
    split = _split_input(upstream, layer, module, delta)
    if split is None:
        raise ValueError(f"edge {source} -> {target}: the layer's input does not split by unit")
    only_u = torch.zeros_like(split)
    only_u[:, u] = split[:, u]
    return _contribution(module, only_u.reshape(delta.shape), v)


def _contribution(module: nn.Module, delta: torch.Tensor, v: int) -> torch.Tensor:
    """The change of unit ``v``'s output (samples, positions) caused by the layer-input change ``delta``."""
    if linear_maps.is_linear(module):
        weight = linear_maps.weight(module).detach()[v]
        return (delta.reshape(delta.shape[0], -1) @ weight).unsqueeze(-1)
    if module.groups != 1:
        raise ValueError("grouped convolutions are not split into edges")
    conv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[delta.dim()]
    out = conv(delta, module.weight.detach()[v:v + 1], None, module.stride, module.padding, module.dilation)
    return out.flatten(1)


def _patched_forward(view: ModelView, batch: torch.Tensor, chunk: list[tuple[str, str]],
                     additions: list[torch.Tensor]) -> torch.Tensor:
    """Outputs (edges, samples, ...) with edge k's addition applied in copy k of the batch."""
    k, n = len(chunk), batch.shape[0]
    by_layer: dict[str, list[tuple[int, int, torch.Tensor]]] = {}
    for index, ((_, target), addition) in enumerate(zip(chunk, additions)):
        layer, unit = view.resolve(target)
        by_layer.setdefault(layer.name, []).append((index, unit, addition))
    hooks = []
    for name, items in by_layer.items():
        layer = view.layer(name)

        def hook(output, _inputs, layer=layer, items=items):
            units = units_view(output, layer).reshape(k, n, layer.size, -1).clone()
            for index, unit, addition in items:
                units[index, :, unit] += addition.reshape(n, -1)
            return from_units_view(units.reshape(k * n, layer.size, -1), output, layer)
        hooks.append((layer, hook))
    with installed(view.hook(layer, fn) for layer, fn in hooks), torch.no_grad():
        return view.model(batch.repeat(k, *([1] * (batch.dim() - 1)))).float().reshape(k, n, -1)
