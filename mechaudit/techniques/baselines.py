"""What "removing" an input region means: the baseline it is replaced by, shared by every rule that intervenes on
inputs (L201's flips and attributions, L204's deletion curves, R303's what-if edits).

A literal zero removes a region only where 0 means "absent" (black pixels, zero-centred features). For inputs
normalised some other way, or raw features whose 0 lies outside the data, zero paints the region with an
off-distribution value, and a model may react to that value rather than to the loss of the region's content.
The baselines:

* ``zero`` (the default): 0 everywhere;
* ``constant``: ``value`` everywhere (e.g. the normalised value of grey);
* ``mean``: the audit data's mean per feature (tabular inputs (N, F)) or per channel (spatial inputs (N, C, ...),
  averaged over samples and positions): the region keeps its average, loses its content;
* ``blur``: the input itself, Gaussian-blurred over its spatial axes (standard deviation ``sigma`` cells): the
  region keeps its coarse layout, loses its detail (Fong and Vedaldi 2017); spatial inputs only;
* ``sample``: another audit sample (seeded draw), a "resample" of the region from the data distribution.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

BASELINES = ("zero", "constant", "mean", "blur", "sample")

Removal = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``remove(inputs, mask) -> inputs`` with the masked region replaced by the baseline."""


def remove_zero(inputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The region set to zero (the default baseline)."""
    return inputs * (1 - mask)


@dataclass(frozen=True)
class Baseline:
    """A baseline (see the module docstring). ``reference``: the audit inputs (for ``mean`` and ``sample``)."""

    kind: str = "zero"
    value: float = 0.0
    sigma: float = 2.0
    reference: torch.Tensor | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in BASELINES:
            raise ValueError(f"unknown baseline '{self.kind}' (known: {', '.join(BASELINES)})")
        if self.kind in ("mean", "sample") and self.reference is None:
            raise ValueError(f"baseline '{self.kind}' needs the audit inputs as reference")
        if self.kind == "blur" and (self.reference is not None and self.reference.dim() < 3):
            raise ValueError("baseline 'blur' needs spatial inputs (N, C, H[, W]); these are (samples, features)")

    @property
    def is_zero(self) -> bool:
        return self.kind == "zero" or (self.kind == "constant" and self.value == 0.0)

    def fill(self, inputs: torch.Tensor) -> torch.Tensor:
        """The baseline for each of ``inputs`` (same shape)."""
        if self.kind == "zero":
            return torch.zeros_like(inputs)
        if self.kind == "constant":
            return torch.full_like(inputs, self.value)
        if self.kind == "mean":
            return self.mean().to(inputs.device, inputs.dtype).expand_as(inputs).clone()
        if self.kind == "blur":
            return blurred(inputs, self.sigma)
        generator = torch.Generator().manual_seed(self.seed)
        chosen = torch.randint(len(self.reference), (len(inputs),), generator=generator)
        return self.reference[chosen].to(inputs.device, inputs.dtype)

    def remove(self, inputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``inputs`` with the region ``mask`` (1 inside, 0 outside; fractional values blend) set to the baseline."""
        if self.is_zero:
            return remove_zero(inputs, mask)
        mask = mask.to(inputs.device, inputs.dtype)
        return inputs * (1 - mask) + self.fill(inputs) * mask

    def mean(self) -> torch.Tensor:
        """Per-feature (N, F) or per-channel (N, C, ...) mean of the reference, shaped to broadcast over a sample."""
        reference = self.reference.float()
        if reference.dim() <= 2:
            return reference.mean(0)
        channels = reference.transpose(0, 1).flatten(1).mean(1)
        return channels.view(-1, *([1] * (reference.dim() - 2)))

    def describe(self) -> dict[str, Any]:
        """For evidence: the kind, in words, and its parameter."""
        words = {"zero": "zero everywhere", "constant": f"the constant {self.value:g}",
                 "mean": "the audit data's mean per " + ("feature" if self.reference is not None
                                                         and self.reference.dim() <= 2 else "channel"),
                 "blur": f"the input Gaussian-blurred (sigma {self.sigma:g} cells)",
                 "sample": "another audit sample (seeded draw)"}[self.kind]
        shown: dict[str, Any] = {"kind": self.kind, "description": words}
        if self.kind == "constant":
            shown["value"] = self.value
        if self.kind == "blur":
            shown["sigma"] = self.sigma
        return shown


def blurred(inputs: torch.Tensor, sigma: float) -> torch.Tensor:
    """A Gaussian blur of (N, C, *spatial) inputs over each spatial axis (reflect padding), per channel."""
    if inputs.dim() < 3:
        raise ValueError("blur needs spatial inputs (N, C, H[, W])")
    if sigma <= 0:
        return inputs.clone()
    radius = max(1, int(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=inputs.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(inputs.dtype)
    out = inputs
    channels = inputs.shape[1]
    for axis in range(2, inputs.dim()):
        moved = out.movedim(axis, -1)
        shape = moved.shape
        flat = moved.reshape(-1, 1, shape[-1])
        pad = min(radius, shape[-1] - 1)
        padded = F.pad(flat, (pad, pad), mode="reflect") if pad > 0 else flat
        weights = kernel[radius - pad:radius + pad + 1]
        weights = (weights / weights.sum()).view(1, 1, -1)
        out = F.conv1d(padded, weights).reshape(shape).movedim(-1, axis)
    assert out.shape[1] == channels
    return out
