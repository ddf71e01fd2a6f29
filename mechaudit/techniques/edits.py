"""What-if edits: simulate suppressing components (mean ablation) and measure what changes, without retraining;
and write the edit into a copy of the weights where the architecture allows it."""

from __future__ import annotations

import torch
from torch import nn

from ..activations import model_outputs
from ..model_view import ModelView
from .node_ablation import ablated


def region_flip_rate(model: nn.Module, inputs: torch.Tensor, mask: torch.Tensor, batch_size: int,
                     device: torch.device) -> float:
    """Fraction of predictions that change when the masked region is set to the zero baseline."""
    before = model_outputs(model, inputs, batch_size, device).argmax(-1)
    after = model_outputs(model, inputs * (1 - mask), batch_size, device).argmax(-1)
    return float((before != after).float().mean())


def what_if_suppressed(view: ModelView, nodes: list[str], values: dict[str, torch.Tensor], inputs: torch.Tensor,
                       labels: torch.Tensor | None, mask: torch.Tensor | None, batch_size: int,
                       device: torch.device) -> dict:
    """Accuracy and region flip rate before and after mean-ablating ``nodes`` (a simulation)."""
    def measure() -> dict:
        outputs = model_outputs(view.model, inputs, batch_size, device)
        result = {}
        if labels is not None:
            result["accuracy"] = float((outputs.argmax(-1) == labels).float().mean())
        if mask is not None:
            result["flip_rate"] = region_flip_rate(view.model, inputs, mask, batch_size, device)
        return result

    before = measure()
    with ablated(view, nodes, values):
        after = measure()
    return {"suppressed": list(nodes), "before": before, "after": after, "simulation": True}


def suppressed_state_dict(view: ModelView, nodes: list[str], values: dict[str, torch.Tensor]) -> dict:
    """A copy of the model's weights in which each node outputs its mean: its weights are zeroed and its bias
    set to its mean output (averaged over positions for convolutions, where a bias cannot vary by position)."""
    state = {name: tensor.detach().clone().cpu() for name, tensor in view.model.state_dict().items()}
    for address in nodes:
        layer, unit = view.resolve(address)
        if layer.kind == "heads":
            raise ValueError(f"{address} is an attention head: a weight edit would change its output projection "
                             f"{layer.site}, which is not written yet (the what-if simulation still applies)")
        weight, bias = f"{layer.name}.weight", f"{layer.name}.bias"
        if bias not in state:
            raise ValueError(f"{layer.name} has no bias, so {address} cannot be set to its mean by a weight edit")
        state[weight][unit] = 0.0
        state[bias][unit] = float(values[layer.name][unit].mean())
    return state
