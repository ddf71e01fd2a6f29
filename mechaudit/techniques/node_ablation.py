"""Mean (or zero) ablation of sets of nodes at once, to measure circuits: faithfulness, completeness,
minimality, single points of failure (Wang et al. 2022; Mueller et al. 2025, MIB)."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager

import torch

from ..model_view import ModelView, from_units_view, installed, units_view
from .circuits import Behaviour


@contextmanager
def ablated(view: ModelView, nodes: Iterable[str], values: dict[str, torch.Tensor]):
    """Within the context, every node (``layer:uN`` address) in ``nodes`` outputs ``values[layer][unit]``
    (a (units, positions) tensor per layer: means for mean ablation, zeros for zero ablation)."""
    by_layer: dict[str, list[int]] = {}
    for address in nodes:
        layer, unit = view.resolve(address)
        by_layer.setdefault(layer.name, []).append(unit)
    hooks = []
    for name, units in by_layer.items():
        layer = view.layer(name)
        index = torch.tensor(sorted(units))
        replacement = values[name]

        def hook(output, _inputs, layer=layer, index=index, replacement=replacement):
            units_out = units_view(output, layer).clone()
            units_out[:, index.to(output.device)] = replacement[index].to(units_out.dtype).to(output.device)
            return from_units_view(units_out, output, layer)
        hooks.append((layer, hook))
    with installed(view.hook(layer, fn) for layer, fn in hooks):
        yield


def behaviour_under_ablation(view: ModelView, inputs: torch.Tensor, targets: torch.Tensor, behaviour: Behaviour,
                             nodes: Iterable[str], values: dict[str, torch.Tensor], batch_size: int,
                             device: torch.device) -> torch.Tensor:
    """Per-sample behaviour over ``inputs`` with ``nodes`` ablated (CPU tensor)."""
    parts = []
    with ablated(view, list(nodes), values), torch.no_grad():
        for start in range(0, inputs.shape[0], batch_size):
            outputs = view.model(inputs[start:start + batch_size].to(device))
            parts.append(behaviour(outputs.float(), targets[start:start + batch_size].to(device)).cpu())
    return torch.cat(parts)


def distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean per-sample absolute difference of two behaviours."""
    return float((a - b).abs().mean())


def faithfulness(m_circuit: torch.Tensor, m_model: torch.Tensor, m_empty: torch.Tensor) -> float:
    """f(C) = 1 - E|m(C) - m(M)| / E|m(empty) - m(M)|, per sample; nan when ablating everything changes nothing.

    Equal to MIB's (m(C) - m(empty)) / (m(M) - m(empty)) when every sample moves the same way; unlike it, it
    does not let effects of opposite sign on different samples cancel (as they do under mean ablation, where
    the average behaviour of the averaged model can equal the model's).
    """
    span = distance(m_empty, m_model)
    return 1.0 - distance(m_circuit, m_model) / span if span > 1e-12 else float("nan")


def curve_area(sizes: list[float], values: list[float]) -> float:
    """Area under a faithfulness-versus-size curve on sizes normalised to [0, 1] (trapezoid rule)."""
    area = 0.0
    for (x0, y0), (x1, y1) in zip(zip(sizes, values), zip(sizes[1:], values[1:])):
        area += (x1 - x0) * (y0 + y1) / 2
    return area
