"""Exact activation patching of single edges: the ground truth that edge attribution patching approximates.

Patching edge ``u -> v`` replaces only ``u``'s contribution to ``v``'s input by its reference value; everything
downstream is recomputed. Where ``v``'s layer input splits by ``u``'s layer's units (checked numerically, as the
edge scores check it: :func:`~.unit_split.unit_splits`), that contribution is ``u``'s part of the input, and its
change reaches ``v`` through ``v``'s weights; elsewhere (heads, residual streams, a skip connection in between) it
is the change of ``v``'s activation when ``u``'s output alone is patched, everything else that reaches ``v`` held
at its clean value (one more forward pass per source unit). Several edges share one forward pass: the batch is
repeated once per edge.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import linear_maps
from ..model_view import Layer, ModelView, from_units_view, installed, units_view
from .circuits import INPUT, Behaviour, _mean_trace, _Recorder
from .unit_split import comparison_pool, joined, split_input, unit_splits


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
    splits: dict[str, bool] = {}
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
            ref_inputs, ref_outputs = ref.inputs, ref.outputs
        else:
            ref_batch = means[INPUT].expand_as(batch)
            ref_inputs = {k: v.expand_as(recorder.inputs[k]) for k, v in means["in"].items()}
            ref_outputs = {k: v.expand_as(recorder.outputs[k]) for k, v in means["out"].items()}
        if start == 0:
            splits = unit_splits(view, batch, comparison_pool(inputs, reference), recorder.inputs).splits
        changes_by_source = _source_changes(view, edges, splits, batch, recorder.outputs, ref_outputs)
        for chunk_start in range(0, len(edges), edges_per_pass):
            chunk = edges[chunk_start:chunk_start + edges_per_pass]
            additions = [_edge_addition(view, edge, splits, recorder.inputs, ref_inputs, batch, ref_batch, regions,
                                        changes_by_source) for edge in chunk]
            patched = _patched_forward(view, batch, chunk, additions)
            metric = behaviour(patched.flatten(0, 1),  # (edges * samples, *output): logits per token kept
                               batch_targets.repeat(len(chunk), *([1] * (batch_targets.dim() - 1))))
            changes = (metric.reshape(len(chunk), batch.shape[0]) - base).abs().sum(1)
            for edge, change in zip(chunk, changes.tolist()):
                effects[edge] += change
    return effects


def _edge_addition(view: ModelView, edge: tuple[str, str], splits: dict[str, bool], inputs: dict, ref_inputs: dict,
                   batch: torch.Tensor, ref_batch: torch.Tensor, regions: dict | None,
                   changes_by_source: dict[str, torch.Tensor]) -> torch.Tensor:
    """The change of the target unit's output (samples, positions) when only this edge is patched."""
    source, target = edge
    layer, v = view.resolve(target)
    module = view.module(layer)
    if source.startswith(INPUT):
        mask = (regions or {}).get(source, torch.ones(batch.shape[1:])).to(batch.device)
        return _contribution(module, (ref_batch - batch) * mask, v)
    if source in changes_by_source:
        return changes_by_source[source][:, v]
    upstream, u = view.resolve(source)
    delta = ref_inputs[layer.name] - inputs[layer.name]
    split = split_input(upstream, layer, module, delta)
    assert split is not None, f"{layer.name}'s input was checked to split by {upstream.name}'s units"
    only_u = torch.zeros_like(split)
    only_u[:, u] = split[:, u]
    return _contribution(module, joined(only_u, delta), v)


def _source_changes(view: ModelView, edges: list[tuple[str, str]], splits: dict[str, bool], batch: torch.Tensor,
                    outputs: dict, ref_outputs: dict) -> dict[str, torch.Tensor]:
    """For each source unit of an edge whose target layer's input does not split by unit: the change of the target
    layer's activation (samples, units, positions) when that unit's output alone is patched to its reference (one
    forward pass per such source unit)."""
    wanted: dict[str, Layer] = {}
    for source, target in edges:
        if not source.startswith(INPUT) and not splits.get(view.resolve(target)[0].name, False):
            wanted.setdefault(source, view.resolve(target)[0])
    changes: dict[str, torch.Tensor] = {}
    for source, target_layer in wanted.items():
        upstream, u = view.resolve(source)
        seen: dict[str, torch.Tensor] = {}

        def patch(output, _args, upstream=upstream, u=u):
            units = units_view(output, upstream).clone()
            units[:, u] = units_view(ref_outputs[upstream.name], upstream)[:, u].to(units.dtype)
            return from_units_view(units, output, upstream)

        def record(output, _args):
            seen["out"] = output.detach()
        with installed(view.hook(at, fn) for at, fn in ((upstream, patch), (target_layer, record))), \
                torch.no_grad():
            view.model(batch)
        changes[source] = units_view(seen["out"] - outputs[target_layer.name].detach(), target_layer)
    return changes


def _contribution(module: nn.Module, delta: torch.Tensor, v: int) -> torch.Tensor:
    """The change of unit ``v``'s output (samples, positions) caused by the layer-input change ``delta``."""
    if linear_maps.is_linear(module):  # on the last axis: one value per sample, or per sample and token
        weight = linear_maps.weight(module).detach()[v]
        return (delta @ weight).reshape(delta.shape[0], -1)
    if module.groups != 1:
        raise ValueError("grouped convolutions are not split into edges")
    conv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[delta.dim()]
    out = conv(delta, module.weight.detach()[v:v + 1], None, module.stride, module.padding, module.dilation)
    return out.flatten(1)


def _patched_forward(view: ModelView, batch: torch.Tensor, chunk: list[tuple[str, str]],
                     additions: list[torch.Tensor]) -> torch.Tensor:
    """Outputs (edges, samples, ...) with edge k's addition applied in copy k of the batch (a next-token model's
    logits keep their token axis, for the behaviour to read its position)."""
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
        out = view.model(batch.repeat(k, *([1] * (batch.dim() - 1)))).float()
        return out.reshape(k, n, *out.shape[1:]) if out.dim() > 1 else out.reshape(k, n, 1)
