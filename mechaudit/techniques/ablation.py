"""Exact unit ablation: replace units' activations and measure how the model's outputs change.

A unit's activation (per position) is replaced by a fixed value (``values``: zeros for zero ablation, the dataset
mean for mean ablation), or by its activation on another input (``source``: resample ablation, Chan et al. 2022).
Three ways to compute the same outputs:

* :func:`ablation_loop`, the reference: one forward pass per unit;
* :func:`ablation_outputs`: several ablations share one forward pass (the batch is repeated once per ablated unit
  and a forward hook overwrites unit ``k`` in copy ``k``);
* :class:`~.ablation_scan.AblationScanner`, the fast scan of every unit of several layers (see there).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

from ..activations import batches
from ..model_view import Layer, from_units_view, installed, register_hook, units_view

MAX_OUTPUT_BYTES = 1 << 29
"""Default bound on the model outputs of one chunk of ablations (float32 bytes, before ``reduce``): a chunk of
next-token logits is copies x samples x tokens x vocabulary, 26 GB for 128 copies of 64 GPT-2 prompts of 16 tokens."""

Reduce = Callable[[torch.Tensor, slice], torch.Tensor]
"""``reduce(outputs, samples)``: applied to each chunk of outputs (ablations, samples, ...) before it is kept, with
the slice of the samples it covers (to read per-sample targets); e.g. ``argmax`` for predictions."""


def write_ablations(units: torch.Tensor, chunk: torch.Tensor, values: torch.Tensor | None,
           source: torch.Tensor | None) -> torch.Tensor:
    """In copy ``i`` of ``units`` (copies, samples, units, positions), replace unit ``chunk[i]``: by
    ``values[unit]`` (units, positions) or by the same unit of ``source`` (samples, units, positions)."""
    copies = torch.arange(len(chunk), device=units.device)
    if source is None:
        units[copies, :, chunk] = values[chunk].to(units.dtype).unsqueeze(1)
    else:
        units[copies, :, chunk] = source[:, chunk].to(units.dtype).transpose(0, 1)
    return units


def check_replacement(values: torch.Tensor | None, source: torch.Tensor | None, inputs: torch.Tensor) -> None:
    if (values is None) == (source is None):
        raise ValueError("give exactly one of values (zero / mean ablation) or source (resample ablation)")
    if source is not None and source.shape != inputs.shape:
        raise ValueError(f"source inputs {tuple(source.shape)} must be shaped like the inputs {tuple(inputs.shape)}")


def _capture(model: nn.Module, module: nn.Module, layer: Layer, batch: torch.Tensor) -> torch.Tensor:
    """``layer``'s activation on ``batch`` as (samples, units, positions)."""
    captured = []
    with installed([register_hook(module, layer, lambda output, _args: captured.append(
            units_view(output, layer).detach()))]), torch.no_grad():
        model(batch)
    return captured[0]


def capture_layers(model: nn.Module, sites: list[tuple[nn.Module, Layer]], batch: torch.Tensor
                   ) -> dict[str, torch.Tensor]:
    """Each layer's activation on one ``batch`` as (samples, units, positions), from one forward pass for all of
    them (``sites``: each layer's hooked module and the layer). A module called more than once per forward pass
    (a shared block) keeps its first call, as the ablation hooks replace it."""
    kept: dict[str, torch.Tensor] = {}

    def keep(layer: Layer):
        def hook(output: torch.Tensor, _args) -> None:
            if layer.name not in kept:
                kept[layer.name] = units_view(output, layer).detach().clone()
        return hook
    with installed([register_hook(module, layer, keep(layer)) for module, layer in sites]), torch.no_grad():
        model(batch)
    missing = [layer.name for _, layer in sites if layer.name not in kept]
    if missing:
        raise RuntimeError(f"layers {missing} did not run on the resample source")
    for name, value in kept.items():
        if len(value) != len(batch):
            raise RuntimeError(f"layer {name} captured {len(value)} samples of the source's {len(batch)}")
    return kept


def ablation_loop(model: nn.Module, module: nn.Module, layer: Layer, inputs: torch.Tensor, units: list[int],
                  values: torch.Tensor | None = None, batch_size: int = 256, device: torch.device | None = None,
                  source: torch.Tensor | None = None) -> torch.Tensor:
    """The reference: one full forward pass per unit and batch (resample ablation first reads the batch's source
    activations, once). Shape (len(units), samples, outputs)."""
    device = device or torch.device("cpu")
    check_replacement(values, source, inputs)
    results: list[list[torch.Tensor]] = [[] for _ in units]
    for start, batch in batches(inputs, batch_size, device):
        src = None if source is None else _capture(model, module, layer, source[start:start + len(batch)].to(device))
        for row, unit in enumerate(units):
            def overwrite(output, _args, unit=unit):
                view = units_view(output, layer).clone()
                view[:, unit] = (values[unit].to(device, view.dtype) if src is None else src[:, unit])
                return from_units_view(view, output, layer)
            with installed([register_hook(module, layer, overwrite)]), torch.no_grad():
                results[row].append(model(batch).float().cpu())
    return torch.stack([torch.cat(parts) for parts in results])


def ablation_outputs(model: nn.Module, module: nn.Module, layer: Layer, inputs: torch.Tensor, units: list[int],
                     values: torch.Tensor | None, batch_size: int, device: torch.device,
                     max_batch: int = 8192, source: torch.Tensor | None = None,
                     reduce: Reduce | None = None, max_output_bytes: int = MAX_OUTPUT_BYTES,
                     source_values: torch.Tensor | None = None) -> torch.Tensor:
    """Model outputs with each unit in ``units`` ablated alone: shape (len(units), samples, outputs).

    ``values`` holds the replacement per unit and position, shape (layer units, positions); zeros give zero
    ablation, the dataset mean gives mean ablation. Or ``source``, inputs like ``inputs``: each sample's unit takes
    its value on the corresponding source sample (resample ablation). Memory is bounded by :func:`chunked`:
    at most ``max_batch`` rows per forward pass and ``max_output_bytes`` of outputs per chunk, each chunk reduced
    (``reduce``, on the device) before the next one runs. ``source_values``: the layer's activations on all of
    ``source`` (samples, units, positions), when already captured (:func:`capture_layers`, one pass for every
    layer), so that resample ablation and patching do not run the source again for each layer.
    """
    check_replacement(values, source, inputs)
    outputs = []
    for start, batch in batches(inputs, batch_size, device):
        stop = start + len(batch)
        src = (None if source is None else source_values[start:stop].to(device) if source_values is not None
               else _capture(model, module, layer, source[start:stop].to(device)))
        samples = slice(start, start + len(batch))

        def run(chunk: list[int], batch=batch, src=src) -> torch.Tensor:
            return _ablated_forward(model, module, layer, batch, torch.tensor(chunk, device=batch.device), values, src)
        per_batch = [(reduce(out, samples) if reduce else out).cpu()
                     for out in chunked(units, len(batch), run, max_batch, max_output_bytes)]
        outputs.append(torch.cat(per_batch))
    return torch.cat(outputs, dim=1)


def chunked(units: list[int], rows: int, run: Callable[[list[int]], torch.Tensor], max_batch: int,
            max_output_bytes: int = MAX_OUTPUT_BYTES) -> Iterator[torch.Tensor]:
    """``run(chunk)`` (outputs (len(chunk), rows, ...)) over consecutive chunks of ``units``, yielded one at a
    time. The first chunk holds one unit; it measures the outputs' bytes per copy, and every later chunk holds as
    many units as keep both its repeated batch (``copies * rows <= max_batch``) and its outputs (``<=
    max_output_bytes``) within bounds (always at least one)."""
    start, copies, limit = 0, 1, max(1, max_batch // max(rows, 1))
    while start < len(units):
        chunk = units[start:start + copies]
        out = run(chunk)
        yield out
        start += len(chunk)
        per_copy = max(1, out[0].numel() * out.element_size())
        copies = max(1, min(limit, max_output_bytes // per_copy))


def _ablated_forward(model: nn.Module, module: nn.Module, layer: Layer, batch: torch.Tensor, chunk: torch.Tensor,
                     values: torch.Tensor | None, source: torch.Tensor | None) -> torch.Tensor:
    k, n = len(chunk), batch.shape[0]
    values = None if values is None else values.to(batch.device)

    def overwrite(output, _args):
        view = units_view(output, layer).reshape(k, n, layer.size, -1).clone()
        written = write_ablations(view, chunk, values, source)
        return from_units_view(written.reshape(k * n, layer.size, -1), output, layer)

    with installed([register_hook(module, layer, overwrite)]), torch.no_grad():
        repeated = batch.repeat(k, *([1] * (batch.dim() - 1)))
        return model(repeated).float().unflatten(0, (k, n))
