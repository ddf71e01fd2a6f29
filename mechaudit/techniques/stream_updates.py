"""How much each residual block changes the stream: the *update* between two readings of a residual stream
(``stream_out - stream_in``, per token), against the stream it adds to.

Two readings of a residual stream are similar by construction (the second is the first plus an update), so their
representational similarity says little about the block between them. The update itself does: a block whose update
carries a negligible share of the stream's variance can be skipped (Men et al. 2024, "ShortGPT": block influence,
one minus the cosine of the stream before and after, per token; Gromov et al. 2024: the angular distance between
the two).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..activations import batches, hooked
from ..model_view import Layer, ModelView
from .sae import layer_vectors


class _Moments:
    """Per-dimension running sums (float64) of vectors added chunk by chunk: their total centred variance."""

    def __init__(self) -> None:
        self.count, self.total, self.squares = 0, 0.0, 0.0

    def add(self, x: torch.Tensor) -> None:
        x = x.double()
        self.total = self.total + x.sum(0)
        self.squares = self.squares + (x ** 2).sum(0)
        self.count += x.shape[0]

    @property
    def variance(self) -> float:
        """Sum over dimensions of the variance (the squared Frobenius norm of the centred vectors, over n - 1)."""
        if self.count < 2:
            return 0.0
        mean = self.total / self.count
        return float((self.squares - self.count * mean ** 2).sum()) / (self.count - 1)


@dataclass(frozen=True)
class StreamUpdate:
    """The update between two readings of a residual stream, per token: its variance against the stream's."""

    before: str
    after: str
    update_variance: float
    stream_variance: float   #: the variance of the stream after the update (``after``)
    vectors: int

    @property
    def share(self) -> float:
        """The update's variance over the stream's (after it), capped at 1: 0 for a block that changes nothing."""
        return min(1.0, self.update_variance / self.stream_variance) if self.stream_variance > 0 else 0.0


def stream_updates(view: ModelView, pairs: list[tuple[Layer, Layer]], inputs: torch.Tensor, batch_size: int,
                   device: torch.device) -> list[StreamUpdate]:
    """For each ``(before, after)`` pair of readings of the same residual stream, the update between them, in one
    streamed pass over ``inputs`` (memory: one batch of activations)."""
    layers = list({layer.name: layer for pair in pairs for layer in pair}.values())
    update = {(a.name, b.name): _Moments() for a, b in pairs}
    stream = {(a.name, b.name): _Moments() for a, b in pairs}
    captured: dict[str, torch.Tensor] = {}
    with hooked(view, layers, lambda layer, output: captured.__setitem__(layer.name, layer_vectors(output, layer))), \
            torch.no_grad():
        for _, batch in batches(inputs, batch_size, device):
            captured.clear()
            view.model(batch)
            for a, b in pairs:
                update[(a.name, b.name)].add((captured[b.name] - captured[a.name]).cpu())
                stream[(a.name, b.name)].add(captured[b.name].cpu())
    return [StreamUpdate(a.name, b.name, update[(a.name, b.name)].variance, stream[(a.name, b.name)].variance,
                         stream[(a.name, b.name)].count) for a, b in pairs]
