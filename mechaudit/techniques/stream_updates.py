"""How much each residual block changes the stream: the *update* between two readings of a residual stream
(``stream_out - stream_in``, per token), against the stream it adds to.

Two readings of a residual stream are similar by construction (the second is the first plus an update), so their
representational similarity says little about the block between them. The update itself does: a block whose update
carries a negligible share of the stream's variance can be skipped (Men et al. 2024, "ShortGPT": block influence,
one minus the cosine of the stream before and after, per token; Gromov et al. 2024: the angular distance between
the two).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..activations import batches, hooked
from ..model_view import Layer, ModelView
from .sae import layer_vectors
from .uncertainty import Interval, bootstrap


class _Moments:
    """Per-sample sums (float64) of vectors added batch by batch (each sample's vectors summed per dimension, and
    their squares in all): the total centred variance of all vectors, or of a bootstrap resample of the samples."""

    def __init__(self) -> None:
        self.sums: list[torch.Tensor] = []
        self.squares: list[torch.Tensor] = []
        self.counts: list[torch.Tensor] = []
        self._joined: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def add(self, x: torch.Tensor, samples: int) -> None:
        """``x``: the vectors of ``samples`` samples, sample by sample (as :func:`.sae.layer_vectors` orders them)."""
        x = x.double().reshape(samples, -1, x.shape[-1])
        self.sums.append(x.sum(1))
        self.squares.append((x ** 2).sum((1, 2)))
        self.counts.append(torch.full((samples,), float(x.shape[1]), dtype=torch.float64))
        self._joined = None

    @property
    def count(self) -> int:
        return int(sum(float(c.sum()) for c in self.counts))

    @property
    def samples(self) -> int:
        return sum(len(c) for c in self.counts)

    def variance(self, weights: torch.Tensor | None = None) -> float:
        """Sum over dimensions of the variance (the squared Frobenius norm of the centred vectors, over n - 1), of
        every vector or with each sample's weighed by ``weights`` (the times a resample drew it)."""
        if self._joined is None:  # joined once for all of a bootstrap's resamples
            self._joined = torch.cat(self.sums), torch.cat(self.squares), torch.cat(self.counts)
        sums, squares, counts = self._joined
        if weights is not None:
            sums, squares, counts = sums * weights[:, None], squares * weights, counts * weights
        count = float(counts.sum())
        if count < 2:
            return 0.0
        return float(squares.sum() - (sums.sum(0) ** 2).sum() / count) / (count - 1)


@dataclass(frozen=True)
class StreamUpdate:
    """The update between two readings of a residual stream, per token: its variance against the stream's."""

    before: str
    after: str
    update_variance: float
    stream_variance: float   #: the variance of the stream after the update (``after``)
    vectors: int
    update: _Moments | None = field(default=None, repr=False, compare=False)
    stream: _Moments | None = field(default=None, repr=False, compare=False)

    @property
    def share(self) -> float:
        """The update's variance over the stream's (after it), capped at 1: 0 for a block that changes nothing."""
        return _share(self.update_variance, self.stream_variance)

    def share_interval(self, seed: int = 0) -> Interval | None:
        """Percentile bootstrap of :attr:`share` over the samples (each sample's tokens resampled together)."""
        if self.update is None or self.stream is None:
            return None

        def statistic(index: np.ndarray) -> float:
            weights = torch.from_numpy(np.bincount(index, minlength=self.stream.samples)).double()
            return _share(self.update.variance(weights), self.stream.variance(weights))

        return bootstrap(statistic, self.stream.samples, seed=seed, resamples=200)


def _share(update_variance: float, stream_variance: float) -> float:
    return min(1.0, update_variance / stream_variance) if stream_variance > 0 else 0.0


def stream_updates(view: ModelView, pairs: list[tuple[Layer, Layer]], inputs: torch.Tensor, batch_size: int,
                   device: torch.device) -> list[StreamUpdate]:
    """For each ``(before, after)`` pair of readings of the same residual stream, the update between them, in one
    streamed pass over ``inputs`` (memory: one batch of activations, and per sample and pair two vectors of the
    stream's width for the bootstrap)."""
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
                update[(a.name, b.name)].add((captured[b.name] - captured[a.name]).cpu(), len(batch))
                stream[(a.name, b.name)].add(captured[b.name].cpu(), len(batch))
    return [StreamUpdate(a.name, b.name, update[(a.name, b.name)].variance(), stream[(a.name, b.name)].variance(),
                         stream[(a.name, b.name)].count, update[(a.name, b.name)], stream[(a.name, b.name)])
            for a, b in pairs]
