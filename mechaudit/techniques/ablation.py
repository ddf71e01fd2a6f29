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

from collections.abc import Callable

import torch
from torch import nn

from ..activations import batches
from ..model_view import Layer, from_units_view, installed, register_hook, units_view

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
                     reduce: Reduce | None = None) -> torch.Tensor:
    """Model outputs with each unit in ``units`` ablated alone: shape (len(units), samples, outputs).

    ``values`` holds the replacement per unit and position, shape (layer units, positions); zeros give zero
    ablation, the dataset mean gives mean ablation. Or ``source``, inputs like ``inputs``: each sample's unit takes
    its value on the corresponding source sample (resample ablation).
    """
    check_replacement(values, source, inputs)
    outputs = []
    for start, batch in batches(inputs, batch_size, device):
        src = None if source is None else _capture(model, module, layer, source[start:start + len(batch)].to(device))
        copies = max(1, max_batch // batch.shape[0])
        per_batch = []
        for chunk_start in range(0, len(units), copies):
            chunk = torch.tensor(units[chunk_start:chunk_start + copies], device=batch.device)
            out = _ablated_forward(model, module, layer, batch, chunk, values, src)
            per_batch.append(reduce(out, slice(start, start + len(batch))) if reduce else out)
        outputs.append(torch.cat(per_batch))
    return torch.cat(outputs, dim=1)


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
        return model(repeated).float().cpu().unflatten(0, (k, n))
