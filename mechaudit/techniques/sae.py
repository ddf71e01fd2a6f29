"""Sparse dictionary learning: a sparse autoencoder (SAE) trained on activation vectors streamed in batches.

A dictionary writes each activation vector ``x`` (a layer's units at one sample and position) as a sparse,
non-negative combination of learned directions plus a bias: ``x ~ b + sum_i f_i(x) d_i`` (Bricken et al. 2023;
Cunningham et al. 2023). Two sparsity mechanisms:

* ``topk`` (Gao et al. 2024): only the ``k`` largest encoder activations are kept, so the L0 is at most ``k``;
  dead latents get an auxiliary loss (AuxK) that makes them model the residual, as in the paper;
* ``l1``: a ReLU encoder with an L1 penalty on the activations weighted by the decoder norms (Conerly et al.
  2024).

Optimisation: Adam with a learning rate scaled by one over the square root of the dictionary size (Gao et al. 2024),
a linear warm-up over the first ``warmup`` share of the steps and a linear decay to 0 over the last ``decay`` share
(on planted sparse directions, at a rate of 1e-2 and 8 features per unit, the decayed dictionaries of two seeds
agreed at 0.84 where a constant 2e-3 left 0.74; rule docs of D103). The warm-up factor never exceeds 1, so a run of
fewer steps than the warm-up needs (``steps * warmup < 1``) trains at the plain rate.

Training never holds the dataset: :func:`train_dictionary` takes a *stream*, a callable that returns a fresh
iterator of ``(n, d)`` chunks on every call (one pass over the data, e.g. one forward pass of a model in batches;
see :func:`layer_stream`), and loops over it until ``steps`` optimiser steps are done. Memory is one chunk plus
the model. Everything else (normalisation, evaluation) is streamed the same way.

Example (a notebook, no engine)::

    stream = layer_stream(view, view.layer("classifier.0"), inputs, batch_size=256, device=device)
    dictionary = train_dictionary(stream, SAEConfig(features=128, k=4), layer="classifier.0")
    stats = evaluate(dictionary, stream)           # FVU, L0, feature frequencies
    dictionary.address(12)                          # 'classifier.0:feat12'
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..activations import batches, hooked
from ..addresses import FEATURE_PREFIX, format_address
from ..model_view import Layer, ModelView, units_view

Stream = Callable[[], Iterable[torch.Tensor]]
"""A fresh pass over the data on every call: an iterable of (n, d) chunks of activation vectors."""

KINDS = ("topk", "l1")
REFERENCE_LR = 2e-2       # the learning rate of a dictionary of REFERENCE_FEATURES features (see SAEConfig.lr)
REFERENCE_FEATURES = 128


@dataclass(frozen=True)
class SAEConfig:
    """How to train a dictionary: ``features`` directions, the sparsity mechanism and the optimisation."""

    features: int
    kind: str = "topk"
    k: int = 4                      #: topk: active features per vector
    l1: float = 1e-3                #: l1: penalty on norm-weighted activations
    steps: int = 1500               #: optimiser steps
    batch: int = 512                #: vectors per step
    lr: float = 0.0                 #: 0: ``REFERENCE_LR * sqrt(REFERENCE_FEATURES / features)``, at most REFERENCE_LR
    aux_k: int = 0                  #: topk: dead latents used by the auxiliary loss (0: 2 * k)
    dead_after: int = 200           #: steps without firing after which a latent counts as dead (for AuxK)
    seed: int = 0
    warmup: float = 0.05            #: share of the steps over which the learning rate rises linearly from 0
    decay: float = 0.5              #: share of the steps (at the end) over which it falls linearly to 0

    @property
    def learning_rate(self) -> float:
        """``lr``, or when 0 the reference rate scaled by one over the square root of the dictionary size (Gao et al.
        2024), no higher for dictionaries smaller than the reference."""
        return self.lr or REFERENCE_LR * math.sqrt(REFERENCE_FEATURES / max(self.features, REFERENCE_FEATURES))

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {self.kind!r}")
        if self.features < 1 or self.k < 1 or self.steps < 1 or self.batch < 1:
            raise ValueError("features, k, steps and batch must be positive")
        if not (0 <= self.warmup <= 1 and 0 <= self.decay <= 1 and self.lr >= 0):
            raise ValueError("warmup and decay must be shares of the steps (0 to 1) and lr not negative")


class SparseAutoencoder(nn.Module):
    """Encoder ``f = sparsify(W_e (x - b_d) + b_e)``, decoder ``x_hat = f W_d + b_d`` with unit-norm rows of
    ``W_d`` (the dictionary directions), on normalised inputs."""

    def __init__(self, dims: int, features: int, kind: str = "topk", k: int = 4,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        decoder = torch.randn(features, dims, generator=generator)
        decoder = decoder / decoder.norm(dim=1, keepdim=True)
        self.kind, self.k = kind, min(k, features)
        self.decoder = nn.Parameter(decoder)
        self.encoder = nn.Parameter(decoder.T.clone())   # tied initialisation (Gao et al. 2024)
        self.encoder_bias = nn.Parameter(torch.zeros(features))
        self.decoder_bias = nn.Parameter(torch.zeros(dims))

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.decoder_bias) @ self.encoder + self.encoder_bias

    def sparsify(self, pre: torch.Tensor) -> torch.Tensor:
        acts = torch.relu(pre)
        if self.kind == "topk" and self.k < acts.shape[1]:
            values, indices = acts.topk(self.k, dim=1)
            acts = torch.zeros_like(acts).scatter_(1, indices, values)
        return acts

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.sparsify(self.pre_activations(x))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.decoder + self.decoder_bias

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        self.decoder /= self.decoder.norm(dim=1, keepdim=True).clamp_min(1e-8)


@dataclass
class Normaliser:
    """Inputs are centred and divided by one scale (the root mean square distance to the mean over dimensions),
    so that hyperparameters transfer between layers; directions are unchanged by it."""

    mean: torch.Tensor
    scale: float

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.device)) / self.scale


def fit_normaliser(stream: Stream) -> tuple[Normaliser, int]:
    """One streamed pass (float64 sums): the mean vector, the scale, and the number of vectors."""
    count, total, squares = 0, None, 0.0
    for chunk in stream():
        chunk = chunk.double()
        total = chunk.sum(0) if total is None else total + chunk.sum(0)
        squares += float((chunk ** 2).sum())
        count += chunk.shape[0]
    if not count:
        raise ValueError("the activation stream is empty")
    mean = total / count
    variance = max(squares / count - float((mean ** 2).sum()), 0.0) / mean.numel()
    return Normaliser(mean.float().cpu(), max(variance ** 0.5, 1e-8)), count


@dataclass
class Dictionary:
    """A trained dictionary of one layer: its directions (``decoder``, unit norm, in the layer's activation space)
    and the encoder that reads them. ``layer:featN`` addresses direction ``N``."""

    layer: str
    config: SAEConfig
    sae: SparseAutoencoder
    normaliser: Normaliser
    history: list[float] = field(default_factory=list)

    @property
    def decoder(self) -> torch.Tensor:
        """(features, dims) unit-norm directions, on the CPU."""
        return self.sae.decoder.detach().float().cpu()

    @property
    def size(self) -> int:
        return self.sae.decoder.shape[0]

    @property
    def dims(self) -> int:
        return self.sae.decoder.shape[1]

    def address(self, feature: int) -> str:
        return format_address(self.layer, FEATURE_PREFIX, feature)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations (n, features) of raw activation vectors (n, dims)."""
        device = self.sae.decoder.device
        return self.sae.encode(self.normaliser(x.to(device).float()))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The dictionary's reconstruction of raw activation vectors, in raw units."""
        device = self.sae.decoder.device
        normalised = self.sae.decode(self.sae.encode(self.normaliser(x.to(device).float())))
        return normalised * self.normaliser.scale + self.normaliser.mean.to(device)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Everything needed to rebuild it, for :func:`save_dictionary` (safetensors)."""
        sae = self.sae
        return {"decoder": self.decoder.contiguous(), "encoder": sae.encoder.detach().float().cpu().contiguous(),
                "encoder_bias": sae.encoder_bias.detach().float().cpu(),
                "decoder_bias": sae.decoder_bias.detach().float().cpu(),
                "mean": self.normaliser.mean.float().cpu(), "scale": torch.tensor([self.normaliser.scale])}

    def metadata(self) -> dict[str, str]:
        c = self.config
        return {"layer": self.layer, "kind": c.kind, "k": str(c.k), "l1": str(c.l1), "features": str(c.features),
                "steps": str(c.steps), "seed": str(c.seed), "batch": str(c.batch), "lr": str(c.lr),
                "learning_rate": str(c.learning_rate), "warmup": str(c.warmup), "decay": str(c.decay),
                "address": f"{self.layer}:{FEATURE_PREFIX}<N>"}


def save_dictionary(dictionary: Dictionary, path: Path) -> None:
    """Write the dictionary as safetensors (tensors plus string metadata)."""
    from safetensors.torch import save_file

    save_file(dictionary.tensors(), str(path), metadata=dictionary.metadata())


def _schedule(meta: dict[str, str]) -> dict:
    """The optimiser settings a saved dictionary records (``lr`` as configured, 0 for the size-scaled default, whose
    value ``learning_rate`` records; files written before these were recorded have none)."""
    kinds = {"lr": float, "warmup": float, "decay": float, "batch": int}
    return {key: kind(meta[key]) for key, kind in kinds.items() if key in meta}


def load_dictionary(path: Path) -> Dictionary:
    """Read a dictionary written by :func:`save_dictionary`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    config = SAEConfig(features=int(meta["features"]), kind=meta["kind"], k=int(meta["k"]), l1=float(meta["l1"]),
                       steps=int(meta["steps"]), seed=int(meta["seed"]), **_schedule(meta))
    features, dims = tensors["decoder"].shape
    sae = SparseAutoencoder(dims, features, config.kind, config.k)
    with torch.no_grad():
        for name in ("decoder", "encoder", "encoder_bias", "decoder_bias"):
            getattr(sae, name).copy_(tensors[name])
    return Dictionary(meta["layer"], config, sae, Normaliser(tensors["mean"], float(tensors["scale"][0])))


def _minibatches(stream: Stream, size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless shuffled minibatches of ``size`` vectors: each chunk of the stream is shuffled and cut, leftovers
    are carried into the next chunk, and the stream restarts when it ends (``size`` must not exceed one pass)."""
    carry: torch.Tensor | None = None
    while True:
        for chunk in stream():
            chunk = chunk.float()
            chunk = chunk[torch.randperm(chunk.shape[0], generator=generator).to(chunk.device)]
            if carry is not None:
                chunk = torch.cat([carry, chunk])
            while chunk.shape[0] >= size:
                yield chunk[:size]
                chunk = chunk[size:]
            carry = chunk


def train_dictionary(stream: Stream, config: SAEConfig, layer: str = "",
                     device: torch.device | str = "cpu") -> Dictionary:
    """Train a sparse autoencoder on the streamed vectors (see the module docstring) and return its dictionary."""
    device = torch.device(device)
    normaliser, count = fit_normaliser(stream)
    generator = torch.Generator().manual_seed(config.seed)
    sae = SparseAutoencoder(normaliser.mean.numel(), config.features, config.kind, config.k, generator).to(device)
    optimiser = torch.optim.Adam(sae.parameters(), lr=config.learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: _lr_factor(step, config))
    since_fired = torch.zeros(config.features, device=device)
    history: list[float] = []
    with closing(_minibatches(stream, min(config.batch, count), generator)) as minibatches:
        for step, raw in zip(range(config.steps), minibatches):
            x = normaliser(raw.to(device))
            loss, fired = _loss(sae, x, config, since_fired > config.dead_after)
            since_fired = torch.where(fired, torch.zeros_like(since_fired), since_fired + 1)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            _project_decoder_grad(sae)
            optimiser.step()
            schedule.step()
            sae.normalise_decoder()
            if step % 50 == 0:
                history.append(round(float(loss.detach()), 5))
    sae.eval()
    return Dictionary(layer, config, sae, normaliser, history)


def _lr_factor(step: int, config: SAEConfig) -> float:
    """The learning rate's multiplier at ``step``: a linear warm-up, a plateau, a linear decay to 0; never above 1
    (a warm-up shorter than a step, or ending between two steps, does not overshoot the rate)."""
    warm, cool = config.warmup * config.steps, config.decay * config.steps
    if step < warm:
        return min(1.0, (step + 1) / warm)
    if cool and step > config.steps - cool:
        return max(0.0, (config.steps - step) / cool)
    return 1.0


def _loss(sae: SparseAutoencoder, x: torch.Tensor, config: SAEConfig,
          dead: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The training loss on normalised vectors ``x``, and which latents fired."""
    pre = sae.pre_activations(x)
    acts = sae.sparsify(pre)
    error = sae.decode(acts) - x
    loss = (error ** 2).sum(1).mean()
    if config.kind == "l1":
        loss = loss + config.l1 * x.shape[1] * (acts * sae.decoder.norm(dim=1)).sum(1).mean()
    elif dead.any():
        loss = loss + _aux_loss(sae, pre, dead, error.detach(), config.aux_k or 2 * config.k) / 32
    return loss, (acts > 0).any(0)


def _aux_loss(sae: SparseAutoencoder, pre: torch.Tensor, dead: torch.Tensor, residual: torch.Tensor,
              aux_k: int) -> torch.Tensor:
    """AuxK (Gao et al. 2024): the top ``aux_k`` dead latents reconstruct the main model's residual error."""
    masked = torch.where(dead, torch.relu(pre), torch.zeros_like(pre))
    k = min(aux_k, int(dead.sum()))
    values, indices = masked.topk(k, dim=1)
    acts = torch.zeros_like(masked).scatter_(1, indices, values)
    estimate = acts @ sae.decoder
    return ((estimate + residual) ** 2).sum(1).mean() / residual.pow(2).sum(1).mean().clamp_min(1e-8)


def _project_decoder_grad(sae: SparseAutoencoder) -> None:
    """Remove the gradient component parallel to each decoder row (the rows stay on the unit sphere)."""
    grad = sae.decoder.grad
    if grad is not None:
        rows = sae.decoder.detach()
        grad -= (grad * rows).sum(1, keepdim=True) * rows


@dataclass
class DictionaryStats:
    """How well a dictionary describes streamed data."""

    fvu: float                  #: fraction of variance unexplained: sum |x - x_hat|^2 / sum |x - mean|^2
    l0: float                   #: mean number of active features per vector
    frequency: torch.Tensor     #: (features,) share of vectors on which each feature is active
    vectors: int

    def dead(self, below: float = 0.0) -> list[int]:
        return (self.frequency <= below).nonzero().flatten().tolist()

    def dense(self, above: float) -> list[int]:
        return (self.frequency > above).nonzero().flatten().tolist()


@torch.no_grad()
def evaluate(dictionary: Dictionary, stream: Stream) -> DictionaryStats:
    """FVU, L0 and per-feature firing frequency, in one streamed pass."""
    residual = total = 0.0
    active = None
    count = 0
    mean = dictionary.normaliser.mean
    for chunk in stream():
        chunk = chunk.float()
        acts = dictionary.encode(chunk)
        reconstruction = dictionary.reconstruct(chunk).cpu()
        chunk = chunk.cpu()
        residual += float(((chunk - reconstruction) ** 2).sum())
        total += float(((chunk - mean) ** 2).sum())
        fired = (acts > 0).sum(0).cpu()
        active = fired if active is None else active + fired
        count += chunk.shape[0]
    frequency = active.double() / max(count, 1)
    return DictionaryStats(residual / max(total, 1e-12), float(frequency.sum()), frequency.float(), count)


def layer_vectors(output: torch.Tensor, layer: Layer) -> torch.Tensor:
    """A layer output as activation vectors (samples * positions, dims): the units at each position (a Conv
    layer's channels at each spatial cell, a token model's units at each token); for attention heads the
    concatenated head outputs at each token."""
    if layer.kind == "heads":
        return output.reshape(-1, output.shape[-1])
    units = units_view(output, layer)
    return units.movedim(1, 2).reshape(-1, units.shape[1])


def layer_stream(view: ModelView, layer: Layer, inputs: torch.Tensor, batch_size: int,
                 device: torch.device) -> Stream:
    """A :data:`Stream` of ``layer``'s activation vectors: each call runs the model over ``inputs`` in batches."""

    def stream() -> Iterator[torch.Tensor]:
        for _, batch in batches(inputs, batch_size, device):
            captured: list[torch.Tensor] = []
            # The hook and no_grad are scoped to the forward pass: no state leaks to the consumer between chunks.
            with hooked(view, [layer], lambda _layer, output: captured.append(layer_vectors(output, layer))), \
                    torch.no_grad():
                view.model(batch)
            yield from captured
    return stream


def tensor_stream(vectors: torch.Tensor, chunk: int = 8192) -> Stream:
    """A :data:`Stream` over vectors already in memory (small layers), in chunks of ``chunk``."""

    def stream() -> Iterator[torch.Tensor]:
        for start in range(0, vectors.shape[0], chunk):
            yield vectors[start:start + chunk]
    return stream


def seed_agreement(first: torch.Tensor, second: torch.Tensor, alive_first: torch.Tensor,
                   alive_second: torch.Tensor) -> torch.Tensor:
    """For each live direction of ``first`` (features, dims), its largest cosine similarity with a live direction
    of ``second``: how far two dictionaries trained with different seeds agree (Paulo and Belrose 2025)."""
    a = first[alive_first]
    b = second[alive_second]
    if not len(a) or not len(b):
        return torch.zeros(len(a))
    return (a @ b.T).amax(1)


@torch.no_grad()
def pooled_features(dictionary: Dictionary, stream: Stream, positions: int, pool: str = "max") -> torch.Tensor:
    """Per-sample feature activations (samples, features): the vectors of a stream taken ``positions`` at a time
    (one sample's positions, in order), pooled by ``max`` or ``mean``."""
    parts = []
    for chunk in stream():
        features = dictionary.encode(chunk).float().cpu()
        features = features.reshape(-1, positions, features.shape[1])
        parts.append(features.amax(1) if pool == "max" else features.mean(1))
    return torch.cat(parts)


def distinct_directions(directions: torch.Tensor, max_cosine: float = 0.9) -> int:
    """How many of ``directions`` (n, dims, unit norm) differ: greedily, a direction counts unless its cosine
    similarity with one already counted exceeds ``max_cosine`` (duplicated features count once)."""
    kept: list[torch.Tensor] = []
    for direction in directions:
        if all(float(direction @ other) <= max_cosine for other in kept):
            kept.append(direction)
    return len(kept)
