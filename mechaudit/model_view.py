"""A view of a model as auditable components, each with an address a user can type.

Layers are Linear and Conv modules, addressed by their module path (``features.3``). Their units are addressed
as ``features.3:ch17`` (a Conv channel) or ``classifier.0:u42`` (a Linear unit). The same string is used in the
CLI, the JSON, and every report.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from .errors import InputError

_UNIT_PREFIX = {"linear": "u", "conv": "ch"}
_ADDRESS = re.compile(r"^(?P<layer>[^:\s]+)(?::(?P<prefix>u|ch)(?P<index>\d+))?$")


@dataclass(frozen=True)
class Layer:
    """One auditable layer: its module path, kind, number of units, and place in the forward pass."""

    name: str
    kind: str
    size: int
    order: int
    is_output: bool = False

    @property
    def prefix(self) -> str:
        return _UNIT_PREFIX[self.kind]

    def address(self, unit: int) -> str:
        return f"{self.name}:{self.unit_name(unit)}"

    def unit_name(self, unit: int) -> str:
        return f"{self.prefix}{unit}"


def layer_kind(module: nn.Module) -> str | None:
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return "conv"
    return None


def units_view(output: torch.Tensor, layer: Layer) -> torch.Tensor:
    """Reshape a layer's output to (samples, units, positions); positions are spatial cells or tokens."""
    if layer.kind == "conv":
        return output.flatten(2) if output.dim() > 2 else output.unsqueeze(-1)
    if output.dim() == 2:
        return output.unsqueeze(-1)
    return output.movedim(-1, 1).flatten(2)


def from_units_view(units: torch.Tensor, like: torch.Tensor, layer: Layer) -> torch.Tensor:
    """Inverse of :func:`units_view`: back to the shape of the layer output ``like``."""
    if layer.kind == "conv" or like.dim() == 2:
        return units.reshape(like.shape)
    return units.reshape(like.movedim(-1, 1).shape).movedim(1, -1)


class ModelView:
    """The layers of a model that the audit can address, in the order the forward pass runs them."""

    def __init__(self, model: nn.Module, layers: list[Layer]) -> None:
        self.model = model
        self.layers = layers
        self._by_name = {layer.name: layer for layer in layers}
        self._modules = dict(model.named_modules())

    @classmethod
    def discover(cls, model: nn.Module, sample: torch.Tensor, only: tuple[str, ...] = ()) -> "ModelView":
        """Run ``sample`` through ``model`` once, recording which Linear/Conv layers run and in what order."""
        candidates = {name: m for name, m in model.named_modules() if name and layer_kind(m)}
        unknown = [name for name in only if name not in candidates]
        if unknown:
            raise InputError("layers", f"'{unknown[0]}' is not a Linear or Conv module of the model")
        seen: list[tuple[str, torch.Tensor]] = []
        handles = [m.register_forward_hook(_recorder(name, seen)) for name, m in candidates.items()]
        try:
            with torch.no_grad():
                output = model(sample)
        finally:
            for handle in handles:
                handle.remove()
        order: dict[str, int] = {}
        for name, _ in seen:
            order.setdefault(name, len(order))
        last = seen[-1] if seen else None
        layers = []
        for name, index in order.items():
            module = candidates[name]
            kind = layer_kind(module)
            size = module.out_features if kind == "linear" else module.out_channels
            is_output = last is not None and name == last[0] and isinstance(output, torch.Tensor) and (
                last[1].shape == output.shape)
            layers.append(Layer(name, kind, size, index, is_output))
        if only:
            layers = [layer for layer in layers if layer.name in only]
        return cls(model, layers)

    @property
    def hidden_layers(self) -> list[Layer]:
        """Layers whose units are internal (the output layer's units are the model's outputs)."""
        return [layer for layer in self.layers if not layer.is_output]

    def module(self, layer: Layer | str) -> nn.Module:
        return self._modules[layer if isinstance(layer, str) else layer.name]

    def layer(self, name: str) -> Layer:
        if name not in self._by_name:
            raise KeyError(name)
        return self._by_name[name]

    def resolve(self, address: str) -> tuple[Layer, int | None]:
        """Parse ``features.3`` or ``features.3:ch17`` into (layer, unit index or None)."""
        match = _ADDRESS.match(address)
        if not match or match["layer"] not in self._by_name:
            raise InputError(f"address '{address}'", "names no auditable layer of the model")
        layer = self._by_name[match["layer"]]
        if match["index"] is None:
            return layer, None
        unit = int(match["index"])
        if match["prefix"] != layer.prefix or unit >= layer.size:
            raise InputError(f"address '{address}'", f"layer {layer.name} has units {layer.prefix}0..{layer.prefix}"
                                                    f"{layer.size - 1}")
        return layer, unit

    def describe(self) -> list[dict]:
        return [{"layer": l.name, "kind": l.kind, "units": l.size, "unit_prefix": l.prefix, "output": l.is_output}
                for l in self.layers]


def _recorder(name: str, seen: list):
    def hook(_module, _inputs, output):
        if isinstance(output, torch.Tensor):
            seen.append((name, output))
    return hook
