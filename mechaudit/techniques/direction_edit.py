"""Directional ablation: erase what an input region writes into a layer, as one direction of its activations.

A region's direction at a layer is the mean change of the layer's activation (all units and positions,
flattened) when the region is set to its baseline: a difference of means. Equalising the means of the two
conditions is what makes a concept linearly undetectable (LEACE, Belrose et al. 2023), and removing one
direction is how a behaviour mediated by it is switched off (directional ablation, Arditi et al. 2024). The
edit sets every sample's coordinate along the direction to its mean over region-removed inputs:
``h' = h - ((h . d) - r) d``; everything orthogonal to ``d`` is left as it is.

The direction spans units *and* positions, so in a convolution it is specific to where the region is: the
channels are left alone everywhere else, which is what unit ablation cannot do.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .. import linear_maps
from ..activations import batches
from ..model_view import Layer, ModelView, installed, units_view
from .baselines import Removal, remove_zero


@dataclass(frozen=True)
class RegionDirection:
    """The unit direction ``d`` of a region at ``layer``, the mean coordinate ``reference`` that the edit writes,
    and ``strength``, the norm of the mean change it was estimated from."""

    layer: Layer
    direction: torch.Tensor  # (activation features,) float32, unit norm
    reference: float
    strength: float
    shape: tuple[int, ...]   # one sample's activation shape

    def unit_shares(self) -> torch.Tensor:
        """Share of the direction's squared norm on each unit (sums to 1): where the region's trace lives."""
        per_unit = units_view(self.direction.view(1, *self.shape), self.layer)[0]
        return per_unit.pow(2).sum(-1)

    def top_units(self, count: int) -> list[dict]:
        shares = self.unit_shares()
        order = shares.argsort(descending=True)[:count].tolist()
        return [{"component": self.layer.address(u), "share": float(shares[u])} for u in order]


def _layer_mean(view: ModelView, layer: Layer, inputs: torch.Tensor, batch_size: int,
                device: torch.device) -> tuple[torch.Tensor, tuple[int, ...]]:
    """The layer's mean activation over ``inputs``, flattened (float64), and one sample's activation shape."""
    total: torch.Tensor | None = None
    shape: tuple[int, ...] = ()

    def keep(output: torch.Tensor, _args: tuple) -> None:
        nonlocal total, shape
        flat = output.detach().flatten(1).double().sum(0).cpu()
        total, shape = (flat if total is None else total + flat), tuple(output.shape[1:])

    with installed([view.hook(layer, keep)]), torch.no_grad():
        for _, batch in batches(inputs, batch_size, device):
            view.model(batch)
    assert total is not None
    return total / inputs.shape[0], shape


def region_direction(view: ModelView, layer: Layer, inputs: torch.Tensor, mask: torch.Tensor, batch_size: int,
                     device: torch.device, remove: Removal = remove_zero) -> RegionDirection | None:
    """The direction of ``mask``'s region at ``layer``, estimated on ``inputs``; None when removing the region
    does not change the layer at all (nothing to erase)."""
    present, shape = _layer_mean(view, layer, inputs, batch_size, device)
    removed, _ = _layer_mean(view, layer, remove(inputs, mask), batch_size, device)
    change = present - removed
    strength = float(change.norm())
    if strength <= 1e-12 * max(1.0, float(present.norm())):
        return None
    direction = (change / strength).float()
    return RegionDirection(layer, direction, float(removed.float() @ direction), strength, shape)


@contextmanager
def projected(view: ModelView, edits: list[RegionDirection]):
    """Within the context, each edit's direction is ablated at its layer: ``h' = h - ((h . d) - r) d``."""
    def hook(output: torch.Tensor, _args: tuple, edit: RegionDirection) -> torch.Tensor:
        flat = output.flatten(1)
        direction = edit.direction.to(device=flat.device, dtype=flat.dtype)
        coordinate = flat @ direction - edit.reference
        return (flat - coordinate[:, None] * direction).view_as(output)
    with installed(view.hook(edit.layer, lambda output, args, edit=edit: hook(output, args, edit)) for edit in edits):
        yield


def projected_linear_state(view: ModelView, edit: RegionDirection) -> dict[str, torch.Tensor]:
    """A copy of the model's weights with the edit folded into a Linear layer whose output is one vector per
    sample: ``W' = W - d (d^T W)``, ``b' = b - d (d^T b) + r d``. Raises ValueError for any other layer (a
    direction over positions cannot be written into weights that every position shares)."""
    module = view.module(edit.layer)
    if edit.layer.kind != "linear" or len(edit.shape) != 1 or module.bias is None:
        raise ValueError(f"{edit.layer.name} is not a Linear layer with a bias and one output vector per sample, so "
                         "the direction edit cannot be written into its weights (only simulated, as in L201's what-if)")
    state = {name: tensor.detach().clone().cpu() for name, tensor in view.model.state_dict().items()}
    d = edit.direction.double()
    stored, bias = state[f"{edit.layer.name}.weight"], state[f"{edit.layer.name}.bias"]
    weight = linear_maps.out_in(module, stored).double()  # (out, in), also for Hugging Face's Conv1D
    new_weight = linear_maps.stored(module, weight - torch.outer(d, d @ weight))
    new_bias = bias.double() - d * float(d @ bias.double()) + edit.reference * d
    state[f"{edit.layer.name}.weight"] = new_weight.to(stored.dtype)
    state[f"{edit.layer.name}.bias"] = new_bias.to(bias.dtype)
    return state
