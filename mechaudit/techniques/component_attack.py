"""Attacks that drive internal components: projected gradient descent in an L-infinity ball whose objective is
the activation of chosen units (a critical unit, a single point of failure, a circuit's units), not the output.

Each unit is pushed from the side of its mean it sits on, per sample and position, towards and past its mean (the
value mean ablation writes): the objective is ``sum_u s_u (a_u(x + delta) - mean_u) / std_u`` minimised, with
``s_u`` the sign of the unit's clean deviation. What changes is the prediction, measured against the model's own:
if a component is a weakness, moving it alone flips decisions. The steps are ART's (sign of the gradient, step
epsilon/4, ``steps`` iterations, no random start, projection onto the ball and the input range), written here
because ART's estimators take a loss of the model's output and labels, while this objective reads a hidden layer
with a direction per sample and unit.
"""

from __future__ import annotations

import torch

from ..activations import batches, collect_units, model_outputs
from ..model_view import Layer, ModelView, installed, units_view


def unit_ablation_flips(view: ModelView, layers: list[Layer], values: dict[str, torch.Tensor], inputs: torch.Tensor,
                        batch_size: int, device: torch.device) -> list[tuple[str, float]]:
    """``(address, share of predictions changed)`` for every unit of ``layers`` mean-ablated alone (``values``:
    per layer, the mean output per unit and position), largest first."""
    from .ablation import ablation_outputs

    before = model_outputs(view.model, inputs, batch_size, device).argmax(-1)
    flips = []
    for layer in layers:
        predicted = ablation_outputs(view.model, view.module(layer), layer, inputs, list(range(layer.size)),
                                     values[layer.name], batch_size, device,
                                     reduce=lambda outputs, _samples: outputs.argmax(-1))
        rates = (predicted != before).float().mean(1)
        flips.extend((layer.address(u), float(rates[u])) for u in range(layer.size))
    return sorted(flips, key=lambda item: -item[1])


def component_attack(view: ModelView, units: list[tuple[Layer, int]], means: dict[str, torch.Tensor],
                     scales: dict[str, torch.Tensor], inputs: torch.Tensor, epsilon: float, clip: tuple[float, float],
                     steps: int, batch_size: int, device: torch.device) -> torch.Tensor:
    """``inputs`` perturbed within ``epsilon`` (L-infinity, inside ``clip``) to push ``units`` (layer, unit)
    towards and past their ``means`` (per layer: (units, positions)), each divided by ``scales`` (its std)."""
    model, results = view.model, []
    by_layer: dict[str, tuple[Layer, list[int]]] = {}
    for layer, unit in units:
        by_layer.setdefault(layer.name, (layer, []))[1].append(unit)
    layers = [layer for layer, _ in by_layer.values()]
    captured: dict[str, torch.Tensor] = {}

    def chosen_units(layer: Layer, output: torch.Tensor) -> torch.Tensor:
        return units_view(output, layer)[:, by_layer[layer.name][1]]

    def capture(layer: Layer):
        return lambda output, _args: captured.__setitem__(layer.name, chosen_units(layer, output))

    placed: dict[str, torch.device] = {}

    def clean_units(layer: Layer, output: torch.Tensor) -> torch.Tensor:
        placed[layer.name] = output.device
        return chosen_units(layer, output)

    for _, clean in batches(inputs, batch_size, device):
        before = collect_units(view, layers, clean, len(clean), device, clean_units)  # on the CPU
        before = {name: units.to(placed[name]) for name, units in before.items()}  # where each layer runs
        at = {name: tuple(t.to(before[name]) for t in _at(means, scales, name, by_layer)) for name in by_layer}
        signs = {name: torch.where(before[name] >= at[name][0], 1.0, -1.0) for name in by_layer}
        with installed(view.hook(layer, capture(layer)) for layer in layers):
            x = clean.clone()
            for _ in range(steps):
                x.requires_grad_(True)
                model(x)
                objective = sum(_pushed(captured[name], signs[name], *at[name]) for name in at)
                gradient, = torch.autograd.grad(objective, x)
                with torch.no_grad():
                    x = x - epsilon / 4 * gradient.sign()
                    x = torch.clamp(torch.minimum(torch.maximum(x, clean - epsilon), clean + epsilon), *clip)
        results.append(x.detach().cpu())
    return torch.cat(results)


def _pushed(units: torch.Tensor, signs: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The objective's term of one layer, ``sum(signs * (units - mean) / scale)`` (all on the device of ``units``)."""
    return (signs * (units - mean) / scale).sum()


def _at(means: dict[str, torch.Tensor], scales: dict[str, torch.Tensor], name: str,
        by_layer: dict[str, tuple[Layer, list[int]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The chosen units' mean and scale in ``name``, shaped (1, units, positions) to broadcast over samples."""
    chosen = by_layer[name][1]
    return means[name][chosen].unsqueeze(0), scales[name][chosen].clamp_min(1e-6).unsqueeze(0)


def random_sign_noise(inputs: torch.Tensor, epsilon: float, clip: tuple[float, float],
                      generator: torch.Generator, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Each input value (where ``mask`` is 1, when given) moved by +-epsilon at random, clipped to ``clip``."""
    signs = torch.randint(0, 2, inputs.shape, generator=generator).to(inputs.dtype) * 2 - 1
    step = epsilon * signs if mask is None else epsilon * signs * mask
    return torch.clamp(inputs + step, *clip)
