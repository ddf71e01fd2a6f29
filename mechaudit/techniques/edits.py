"""What-if edits: simulate suppressing components (mean ablation of units, or directional ablation of what an input
region writes into a layer) and measure what changes, without retraining; and write the edit into a copy of the
weights where the architecture allows it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .. import linear_maps
from ..activations import model_outputs
from ..model_view import Layer, ModelView
from .baselines import Removal, remove_zero
from .direction_edit import RegionDirection, projected, region_direction
from .node_ablation import ablated


def region_flip_rate(model: nn.Module, inputs: torch.Tensor, mask: torch.Tensor, batch_size: int,
                     device: torch.device, remove: Removal = remove_zero) -> float:
    """Fraction of predictions that change when the masked region is set to the baseline (default zero)."""
    before = model_outputs(model, inputs, batch_size, device).argmax(-1)
    after = model_outputs(model, remove(inputs, mask), batch_size, device).argmax(-1)
    return float((before != after).float().mean())


def measure(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor | None, mask: torch.Tensor | None,
            batch_size: int, device: torch.device, remove: Removal = remove_zero) -> dict:
    """Accuracy (on the inputs as given and with the region removed) and the region's flip rate."""
    result = {}
    if labels is not None:
        shown = {"accuracy": inputs}
        if mask is not None:
            shown["accuracy_region_removed"] = remove(inputs, mask)
        for key, batch in shown.items():
            predictions = model_outputs(model, batch, batch_size, device).argmax(-1)
            result[key] = float((predictions == labels).float().mean())
    if mask is not None:
        result["flip_rate"] = region_flip_rate(model, inputs, mask, batch_size, device, remove)
    return result


@dataclass(frozen=True)
class HeldOut:
    """The samples a direction is estimated on (even-numbered) and those its effect is measured on (odd-numbered),
    so that what-if figures are held out."""

    fit_inputs: torch.Tensor
    fit_mask: torch.Tensor
    inputs: torch.Tensor
    labels: torch.Tensor | None
    mask: torch.Tensor
    remove: Removal = remove_zero

    @classmethod
    def split(cls, inputs: torch.Tensor, labels: torch.Tensor | None, mask: torch.Tensor,
              remove: Removal = remove_zero) -> "HeldOut":
        mask = mask.expand_as(inputs) if mask.shape != inputs.shape else mask
        fit, held = torch.arange(0, len(inputs), 2), torch.arange(1, len(inputs), 2)
        return cls(inputs[fit], mask[fit], inputs[held], labels[held] if labels is not None else None, mask[held],
                   remove)

    def measure(self, model: nn.Module, batch_size: int, device: torch.device) -> dict:
        return measure(model, self.inputs, self.labels, self.mask, batch_size, device, self.remove)


def erased(view: ModelView, layer: Layer, samples: HeldOut, batch_size: int,
           device: torch.device) -> tuple[RegionDirection | None, dict | None]:
    """The region's direction at ``layer`` (estimated on the fit half) and the held-out figures with it erased;
    (None, None) when removing the region does not change the layer."""
    edit = region_direction(view, layer, samples.fit_inputs, samples.fit_mask, batch_size, device, samples.remove)
    if edit is None:
        return None, None
    with projected(view, [edit]):
        return edit, samples.measure(view.model, batch_size, device)


def what_if_erased(view: ModelView, layers: list[Layer], inputs: torch.Tensor, labels: torch.Tensor | None,
                   mask: torch.Tensor, batch_size: int, device: torch.device, max_accuracy_cost: float = 0.05,
                   top_units: int = 5, remove: Removal = remove_zero) -> dict | None:
    """Before / after erasing the region's direction at each layer in turn (a simulation), on :class:`HeldOut`
    samples. The recommended edit (``best``) is the layer with the lowest flip rate whose accuracy on
    region-removed inputs drops by at most ``max_accuracy_cost`` (any layer when none does). None with fewer
    than 4 samples."""
    if inputs.shape[0] < 4:
        return None
    samples = HeldOut.split(inputs, labels, mask, remove)
    before = samples.measure(view.model, batch_size, device)
    rows = []
    for layer in layers:
        edit, after = erased(view, layer, samples, batch_size, device)
        if edit is not None:
            rows.append({"layer": layer.name, "after": after, "direction_strength": edit.strength,
                         "units": edit.top_units(top_units)})
    if not rows:
        return None
    key = "accuracy_region_removed" if samples.labels is not None else None

    def cost(row: dict) -> float:
        return before[key] - row["after"][key] if key else 0.0

    affordable = [row for row in rows if cost(row) <= max_accuracy_cost] or rows
    best = min(affordable, key=lambda row: (row["after"]["flip_rate"], cost(row)))
    return {"edit": "directional ablation of the region's mean effect on a layer (a simulation, not a retrained "
                    "model)", "fit_samples": len(samples.fit_inputs), "evaluated_samples": len(samples.inputs),
            "before": before, "best": best["layer"], "max_accuracy_cost": max_accuracy_cost, "layers": rows,
            "simulation": True}


def what_if_suppressed(view: ModelView, nodes: list[str], values: dict[str, torch.Tensor], inputs: torch.Tensor,
                       labels: torch.Tensor | None, mask: torch.Tensor | None, batch_size: int,
                       device: torch.device, remove: Removal = remove_zero) -> dict:
    """Accuracy and region flip rate before and after mean-ablating ``nodes`` (a simulation) at each layer's own
    output (before its nonlinearity), the tensor :func:`suppressed_state_dict` writes into the weights: unlike R302
    and R304, which ablate what the next layer reads, so that the simulation and the written weights agree."""
    before = measure(view.model, inputs, labels, mask, batch_size, device, remove)
    with ablated(view, nodes, values):
        after = measure(view.model, inputs, labels, mask, batch_size, device, remove)
    return {"suppressed": list(nodes), "before": before, "after": after, "simulation": True}


def suppressed_state_dict(view: ModelView, nodes: list[str], values: dict[str, torch.Tensor]) -> dict:
    """A copy of the model's weights in which each node outputs its mean: its weights are zeroed and its bias
    set to its mean output (averaged over positions for convolutions, where a bias cannot vary by position)."""
    state = {name: tensor.detach().clone().cpu() for name, tensor in view.model.state_dict().items()}
    for address in nodes:
        layer, unit = view.resolve(address)
        if layer.kind == "stream":
            raise ValueError(f"{address} is a dimension of the residual stream, which no single weight writes (the "
                             "what-if simulation still applies)")
        if layer.kind == "heads":
            raise ValueError(f"{address} is an attention head: a weight edit would change its output projection "
                             f"{layer.site}, which is not written yet (the what-if simulation still applies)")
        weight, bias = f"{layer.name}.weight", f"{layer.name}.bias"
        if bias not in state:
            raise ValueError(f"{layer.name} has no bias, so {address} cannot be set to its mean by a weight edit")
        linear_maps.out_in(view.module(layer), state[weight])[unit] = 0.0  # Conv1D: a column of the stored weight
        state[bias][unit] = float(values[layer.name][unit].mean())
    return state
