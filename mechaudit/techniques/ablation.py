"""Exact unit ablation: replace one unit's activation and measure how the model's outputs change.

Several ablations share one forward pass: the batch is repeated once per ablated unit and a forward hook
overwrites unit ``k`` in copy ``k`` only.
"""

from __future__ import annotations

import torch
from torch import nn

from ..activations import batches
from ..model_view import Layer, from_units_view, register_hook, units_view


def ablation_outputs(model: nn.Module, module: nn.Module, layer: Layer, inputs: torch.Tensor, units: list[int],
                     values: torch.Tensor, batch_size: int, device: torch.device,
                     max_batch: int = 8192) -> torch.Tensor:
    """Model outputs with each unit in ``units`` ablated alone: shape (len(units), samples, outputs).

    ``values`` holds the replacement per unit and position, shape (layer units, positions); zeros give zero
    ablation, the dataset mean gives mean ablation.
    """
    outputs = []
    for start, batch in batches(inputs, batch_size, device):
        copies = max(1, max_batch // batch.shape[0])
        per_batch = []
        for chunk_start in range(0, len(units), copies):
            chunk = units[chunk_start:chunk_start + copies]
            per_batch.append(_ablated_forward(model, module, layer, batch, chunk, values.to(device)))
        outputs.append(torch.cat(per_batch))
    return torch.cat(outputs, dim=1)


def _ablated_forward(model: nn.Module, module: nn.Module, layer: Layer, batch: torch.Tensor, chunk: list[int],
                     values: torch.Tensor) -> torch.Tensor:
    k, n = len(chunk), batch.shape[0]
    index = torch.tensor(chunk, device=batch.device)

    def overwrite(_module, _inputs, output):
        view = units_view(output, layer).reshape(k, n, layer.size, -1).clone()
        view[torch.arange(k, device=batch.device), :, index] = values[index].to(view.dtype).unsqueeze(1)
        return _restore(view.reshape(k * n, layer.size, -1), output, layer)

    handle = register_hook(module, layer, lambda output, args: overwrite(module, args, output))
    try:
        with torch.no_grad():
            repeated = batch.repeat(k, *([1] * (batch.dim() - 1)))
            return model(repeated).float().cpu().reshape(k, n, -1)
    finally:
        handle.remove()


def _restore(units: torch.Tensor, like: torch.Tensor, layer: Layer) -> torch.Tensor:
    """Inverse of :func:`units_view`."""
    return from_units_view(units, like, layer)
