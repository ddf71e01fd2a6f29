"""Activation maximisation: an input optimised by gradient ascent to excite one unit or dictionary feature.

Starting from a grey image with a little seeded noise, Adam ascends the unit's mean activation (a convolution
channel's spatial mean, a Linear unit's value, a sequence unit's mean over positions) or, for a dictionary
feature, the projection of the layer's (position-averaged) activation on the feature's direction. The usual
regularisers keep the image natural enough to read: a random jitter (roll by up to ``jitter`` pixels) before each
step, a Gaussian blur every ``blur_every`` steps, and a clamp to the data range (Erhan et al. 2009, "Visualizing
Higher-Layer Features of a Deep Network"; Olah et al. 2017, "Feature Visualization", Distill).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layouts import SAMPLES_FIRST, Layout
from ..model_view import installed

MAX_SIDE = 32  # the stored picture is average-pooled to at most this many pixels a side


def maximize_activation(model: nn.Module, layer_module: nn.Module, unit: int, shape: tuple[int, ...],
                        direction: torch.Tensor | None = None, steps: int = 128, lr: float = 0.05, jitter: int = 1,
                        blur_every: int = 4, seed: int = 0, device: str | torch.device = "cpu",
                        value_range: tuple[float, float] = (0.0, 1.0), centre: bool = False,
                        layout: Layout = SAMPLES_FIRST) -> dict:
    """Optimise one image of ``shape`` ``(C, H, W)`` to maximise ``unit`` of ``layer_module`` (or ``direction``).

    ``centre``: for a convolution, maximise the unit at the centre of its map (the "neuron" objective of Olah et
    al. 2017: a pattern within one receptive field) instead of its mean over the map (the "channel" objective,
    which a uniformly bright image often maximises). ``layout``: the layer's (:attr:`~..model_view.Layer.layout`),
    to read its output samples first.

    Returns ``{"objective", "objective_start", "steps", "image"}``; ``image`` is the optimised input's mean over
    channels as a 2-D list (4 decimals). The model's parameters get no gradients and its training mode is restored.
    """
    if len(shape) != 3:
        raise ValueError(f"activation maximisation needs an image shape (C, H, W), got {tuple(shape)}")
    low, high = float(value_range[0]), float(value_range[1])
    if not high > low:
        raise ValueError(f"value_range must be increasing, got {value_range}")
    generator = torch.Generator().manual_seed(seed)
    start = 0.5 * (low + high) + 0.01 * (high - low) * torch.randn((1, *shape), generator=generator)
    image = start.clamp(low, high).to(device)
    captured: list[torch.Tensor] = []
    was_training = model.training
    model.eval()
    try:
        with installed([layer_module.register_forward_hook(
                lambda _m, _i, out: captured.append(layout.samples_first(_first(out))))]):
            objective = _objective_fn(model, captured, unit, direction, centre)
            with torch.no_grad():
                objective_start = float(objective(image))
            image = _ascend(objective, image, steps, lr, jitter, blur_every, generator, (low, high))
            with torch.no_grad():
                objective_end = float(objective(image))
    finally:
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    grey = image[0].detach().float().mean(0).cpu()
    side = (min(grey.shape[0], MAX_SIDE), min(grey.shape[1], MAX_SIDE))
    grey = F.adaptive_avg_pool2d(grey[None, None], side)[0, 0]  # a bounded picture, as exemplar tiles are
    return {"objective": round(objective_end, 4) + 0.0, "objective_start": round(objective_start, 4) + 0.0,
            "steps": int(steps), "image": [[round(float(v), 4) + 0.0 for v in row] for row in grey]}


def _objective_fn(model: nn.Module, captured: list[torch.Tensor], unit: int, direction: torch.Tensor | None,
                  centre: bool = False):
    """``image -> scalar``: the unit's pooled activation, or the pooled activation's projection on ``direction``."""
    def objective(image: torch.Tensor) -> torch.Tensor:
        captured.clear()
        model(image)
        if not captured:
            raise RuntimeError("the layer did not run in the model's forward pass")
        output = captured[-1]
        if centre and output.dim() == 4:
            output = output[:, :, output.shape[2] // 2, output.shape[3] // 2]
        pooled = _pool(output)
        if direction is None:
            if not 0 <= unit < pooled.shape[1]:
                raise ValueError(f"unit {unit} out of range for a layer with {pooled.shape[1]} units")
            return pooled[0, unit]
        vector = direction.detach().to(pooled.device, pooled.dtype).flatten()
        if vector.numel() != pooled.shape[1]:
            raise ValueError(f"direction has {vector.numel()} entries, the layer {pooled.shape[1]} units")
        return pooled[0] @ vector
    return objective


def _ascend(objective, image: torch.Tensor, steps: int, lr: float, jitter: int, blur_every: int,
            generator: torch.Generator, value_range: tuple[float, float]) -> torch.Tensor:
    """Adam ascent on the image alone, with jitter, periodic blur and clamping.

    Adam's update is written out (torch.optim.Adam's defaults: betas 0.9, 0.999, eps 1e-8) because constructing any
    ``torch.optim`` optimiser imports ``torch._dynamo`` on first use, which takes longer (about 4 s on a CPU) than
    the whole ascent of a small model."""
    image = image.clone().requires_grad_(True)
    first, second = torch.zeros_like(image), torch.zeros_like(image)
    for step in range(steps):
        shifts = torch.randint(-jitter, jitter + 1, (2,), generator=generator).tolist() if jitter > 0 else [0, 0]
        with torch.enable_grad():
            value = objective(torch.roll(image, shifts=shifts, dims=(2, 3)))
            (gradient,) = torch.autograd.grad(-value, [image])
        with torch.no_grad():
            first.mul_(0.9).add_(gradient, alpha=0.1)
            second.mul_(0.999).addcmul_(gradient, gradient, value=0.001)
            corrected = (second / (1 - 0.999 ** (step + 1))).sqrt_().add_(1e-8)
            image.addcdiv_(first, corrected, value=-lr / (1 - 0.9 ** (step + 1)))
            if blur_every > 0 and (step + 1) % blur_every == 0:
                image.copy_(_blur(image))
            image.clamp_(*value_range)
    return image.detach()


def _blur(image: torch.Tensor, sigma: float = 0.5) -> torch.Tensor:
    """A 3x3 Gaussian blur per channel, edges replicated."""
    taps = torch.exp(-torch.tensor([-1.0, 0.0, 1.0]) ** 2 / (2 * sigma ** 2))
    kernel = torch.outer(taps, taps)
    kernel = (kernel / kernel.sum()).to(image.device, image.dtype)
    channels = image.shape[1]
    padded = F.pad(image, (1, 1, 1, 1), mode="replicate")
    return F.conv2d(padded, kernel.expand(channels, 1, 3, 3), groups=channels)


def _pool(output: torch.Tensor) -> torch.Tensor:
    """``(1, U)``: a conv output's spatial mean, a sequence's mean over positions, a Linear output as is."""
    if output.dim() == 4:
        return output.mean(dim=(2, 3))
    if output.dim() == 3:
        return output.mean(dim=1)
    return output.reshape(output.shape[0], -1)


def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output
