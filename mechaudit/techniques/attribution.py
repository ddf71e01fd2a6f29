"""Input attributions with captum, batched, on the model's device."""

from __future__ import annotations

import torch
from torch import nn

METHODS = ("integrated_gradients", "saliency")


def attribute(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, device: torch.device,
              method: str = "integrated_gradients", baseline: torch.Tensor | None = None, n_steps: int = 32,
              batch_size: int = 64) -> torch.Tensor:
    """Attribution of each input element to the ``targets`` logits, shape like ``inputs`` (CPU)."""
    from captum.attr import IntegratedGradients, Saliency

    explainer = IntegratedGradients(model) if method == "integrated_gradients" else Saliency(model)
    parts = []
    for start in range(0, inputs.shape[0], batch_size):
        batch = inputs[start:start + batch_size].to(device).requires_grad_(True)
        target = targets[start:start + batch_size].to(device)
        if method == "integrated_gradients":
            base = torch.zeros_like(batch) if baseline is None else baseline.to(device).expand_as(batch)
            result = explainer.attribute(batch, baselines=base, target=target, n_steps=n_steps,
                                         internal_batch_size=batch.shape[0] * 8)
        else:
            result = explainer.attribute(batch, target=target, abs=False)
        parts.append(result.detach().float().cpu())
    return torch.cat(parts)
