"""Capture layer activations with forward hooks, streaming over the data in batches.

Nothing here holds the whole dataset's activations: :func:`unit_statistics` keeps running sums per unit.
A check that needs per-sample activations asks for them explicitly (:func:`per_sample_activations`, or
:func:`collect_units` for what it keeps of each batch).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .errors import InputError
from .model_view import Layer, ModelView, installed, units_view


def batches(inputs: torch.Tensor, batch_size: int, device: torch.device) -> Iterator[tuple[int, torch.Tensor]]:
    for start in range(0, inputs.shape[0], batch_size):
        yield start, inputs[start:start + batch_size].to(device, non_blocking=True)


@contextmanager
def hooked(view: ModelView, layers: list[Layer], sink: Callable[[Layer, torch.Tensor], None]):
    """Call ``sink(layer, output)`` for every forward of each layer while the context is open."""
    with installed(view.hook(layer, _forward_to(layer, sink)) for layer in layers):
        yield


def _forward_to(layer: Layer, sink):
    def hook(output: torch.Tensor, _inputs: tuple) -> None:
        sink(layer, output.detach())
    return hook


@dataclass
class UnitStats:
    """Running statistics of one layer's units over the audit data (float64 sums, on the CPU)."""

    count: int
    max: torch.Tensor          # (units,) largest activation anywhere
    min: torch.Tensor          # (units,) smallest activation anywhere
    active: torch.Tensor       # (units,) samples in which the unit is > 0 at some position
    total: torch.Tensor        # (units, positions) sum over samples
    always: torch.Tensor       # (units,) samples in which the unit is > 0 at every position
    input_total: torch.Tensor | None = None  # (one sample's input shape) sum of a Linear/Conv layer's input

    @property
    def mean_map(self) -> torch.Tensor:
        """Mean activation per unit and position (used for mean ablation)."""
        return self.total / max(self.count, 1)

    @property
    def input_mean(self) -> torch.Tensor | None:
        """Mean of the layer's input (a Linear or Conv layer's, fed a floating-point tensor of one shape; else
        None): where the units of the layer before it are mean-ablated when that input splits by them
        (:func:`~mechaudit.techniques.node_ablation.read_sites`)."""
        return None if self.input_total is None else self.input_total / max(self.count, 1)

    @property
    def active_fraction(self) -> torch.Tensor:
        return self.active / max(self.count, 1)

    @property
    def always_fraction(self) -> torch.Tensor:
        """Share of samples on which the unit is > 0 at every position (never switched off)."""
        return self.always / max(self.count, 1)


def unit_statistics(view: ModelView, layers: list[Layer], inputs: torch.Tensor, batch_size: int,
                    device: torch.device) -> dict[str, UnitStats]:
    """One streaming pass over ``inputs`` computing :class:`UnitStats` for every layer."""
    stats: dict[str, UnitStats] = {}
    readers = {layer.name for layer in layers[1:]}  # the first layer's input is read from no audited unit

    def accumulate(layer: Layer, output: torch.Tensor, args: tuple) -> None:
        units = units_view(output.detach(), layer).double()
        per_sample_max = units.amax(dim=2)
        batch = UnitStats(units.shape[0], per_sample_max.amax(0).cpu(), units.amin(dim=(0, 2)).cpu(),
                          (per_sample_max > 0).sum(0).cpu(), units.sum(0).cpu(), (units.amin(dim=2) > 0).sum(0).cpu(),
                          _input_total(layer, args, units.shape[0]) if layer.name in readers else None)
        previous = stats.get(layer.name)
        stats[layer.name] = batch if previous is None else UnitStats(
            previous.count + batch.count, torch.maximum(previous.max, batch.max),
            torch.minimum(previous.min, batch.min), previous.active + batch.active, previous.total + batch.total,
            previous.always + batch.always, _added(previous.input_total, batch.input_total))

    def hook(layer: Layer):
        return lambda output, args: accumulate(layer, output, args)

    with installed(view.hook(layer, hook(layer)) for layer in layers), torch.no_grad():
        for _, batch in batches(inputs, batch_size, device):
            view.model(batch)
    return stats


def _input_total(layer: Layer, args: tuple, samples: int) -> torch.Tensor | None:
    """The sum over samples of a Linear or Conv layer's floating-point input (float64, CPU); else None."""
    x = args[0] if args else None
    if layer.kind not in ("linear", "conv") or not isinstance(x, torch.Tensor) or not x.is_floating_point() \
            or x.dim() < 2 or x.shape[0] != samples:
        return None
    return x.detach().double().sum(0).cpu()


def _added(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    return a + b if a is not None and b is not None and a.shape == b.shape else None


def collect_units(view: ModelView, layers: list[Layer], inputs: torch.Tensor, batch_size: int,
                  device: torch.device, keep: Callable[[Layer, torch.Tensor], torch.Tensor] | None = None
                  ) -> dict[str, torch.Tensor]:
    """Per layer, what ``keep(layer, output)`` makes of each batch's output (by default its units, (samples, units,
    positions): :func:`~mechaudit.model_view.units_view`), concatenated over ``inputs`` on the CPU. One pass in
    batches without gradients; ``keep`` reduces a batch first (one unit, a pooling, a dtype), so that only what is
    kept is held."""
    chunks: dict[str, list[torch.Tensor]] = {layer.name: [] for layer in layers}

    def store(layer: Layer, output: torch.Tensor) -> None:
        chunks[layer.name].append((units_view(output, layer) if keep is None else keep(layer, output)).cpu())

    with hooked(view, layers, store), torch.no_grad():
        for _, batch in batches(inputs, batch_size, device):
            view.model(batch)
    return {name: torch.cat(parts) for name, parts in chunks.items()}


POOLS = ("mean", "max", "first", "last")


def per_sample_activations(view: ModelView, layers: list[Layer], inputs: torch.Tensor, batch_size: int,
                           device: torch.device, pool: str = "mean") -> dict[str, torch.Tensor]:
    """Per-sample unit activations, shape (samples, units), on the CPU: the ``mean`` (or the ``max``, a unit's
    strongest response anywhere in the sample) over its positions, or its activation at the ``first`` or ``last``
    position (for token models: the first or last token; a head's output vector there, averaged)."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {', '.join(POOLS)}, not {pool!r}")

    def keep(layer: Layer, output: torch.Tensor) -> torch.Tensor:
        units = units_view(output, layer)
        if pool in ("first", "last"):
            index = 0 if pool == "first" else -1
            if layer.kind == "heads":  # positions are (tokens, head dims)
                pooled = units.reshape(*units.shape[:2], output.shape[1], -1)[:, :, index].mean(-1)
            else:
                pooled = units[..., index]
        else:
            pooled = units.mean(dim=2) if pool == "mean" else units.amax(dim=2)
        return pooled.float()

    return collect_units(view, layers, inputs, batch_size, device, keep)


def model_outputs(model: nn.Module, inputs: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """The model's outputs for all inputs, on the CPU."""
    parts = []
    with torch.no_grad():
        for _, batch in batches(inputs, batch_size, device):
            output = model(batch)
            if not isinstance(output, torch.Tensor):
                raise InputError("model", f"returns a {_kind(output)}; expected a tensor of outputs (or a "
                                          "Hugging Face output with logits): make forward return one tensor")
            parts.append(output.float().cpu())
    return torch.cat(parts)


def _kind(output: object) -> str:
    """``output``'s type, with its fields for a mapping (a Hugging Face ``ModelOutput``: ``last_hidden_state``, ...)."""
    fields = f" ({', '.join(map(str, list(output)[:4]))})" if isinstance(output, Mapping) and output else ""
    return f"{type(output).__name__}{fields}"
