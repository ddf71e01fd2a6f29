"""Dictionary size and sparsity chosen from the data: a small, bounded sweep on held-out vectors.

Two stages, on at most ``max_vectors`` activation vectors of which a fifth is held out:

1. *Size.* At the reference sparsity ``k_ref``, dictionaries of ``expansion`` features per dimension are trained
   for ``expansion`` in ``expansions`` (ascending); the smallest one after which doubling the size lowers the
   held-out FVU by less than ``min_gain`` (relative) is kept: a dictionary too small for the data's directions
   reconstructs worse and recovers fewer of them, one larger than needed only splits them.
2. *Sparsity.* With that size, ``k`` is searched over ``ks`` (ascending); for each ``k`` tried, two seeds are
   trained and the held-out FVU and their seed agreement measured. The smallest ``k`` whose FVU reaches
   ``fvu_target`` is found by bisection (the FVU falls as ``k`` grows); it is chosen when its seeds agree at
   ``min_agreement``, else the next ``k`` when that one's do, else it; when no ``k`` reaches the target, the
   largest tried.

Cost: at most ``len(expansions) + 2 * (log2(len(ks)) + 2)`` dictionaries of ``steps`` steps each, and never more than
``budget`` multiply-adds (:func:`training_cost`): when the first two sizes and the bisection's usual probes would
not fit, each candidate trains fewer steps (at least 50), then on smaller batches (at least 32 vectors); a candidate
that would still exceed it is not trained, and the reason says so (the size stage keeps the largest size it could
afford; the sparsity stage the best k tried). The least sweep (the first size and one pair of k, 50 steps of 32
vectors: :func:`least_sweep_cost`) must fit the budget: the caller checks it and skips the sweep otherwise.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch

from .sae import SAEConfig, evaluate, seed_agreement, tensor_stream, train_dictionary

MIN_SWEEP_STEPS = 50  # a candidate trains at least this many steps
MIN_SWEEP_BATCH = 32  # on batches of at least this many vectors (when the budget is tight, smaller batches first)


@dataclass(frozen=True)
class SweepPoint:
    """One trained candidate: its size and sparsity, held-out FVU and (sparsity stage) seed agreement."""

    stage: str
    expansion: int
    k: int
    fvu: float
    seed_agreement: float | None = None


@dataclass(frozen=True)
class SizeChoice:
    """The chosen dictionary size (features per dimension) and sparsity, the candidates tried and why."""

    expansion: int
    k: int
    points: tuple[SweepPoint, ...]
    reason: str
    cost: float = 0.0           #: multiply-adds spent training the candidates
    steps: int = 0              #: optimiser steps per candidate
    batch: int = 0              #: vectors per step

    def as_evidence(self) -> dict:
        return {"expansion": self.expansion, "k": self.k, "reason": self.reason,
                "candidates": [asdict(point) for point in self.points], "gmac": round(self.cost / 1e9, 2),
                "steps": self.steps, "batch": self.batch}


def training_cost(features: int, dims: int, batch: int, steps: int) -> float:
    """Multiply-adds to train a dictionary: per step, the encoder and decoder products (``batch x features x
    dims`` each) forward, and twice that backward."""
    return 6.0 * batch * features * dims * steps


def least_sweep_cost(dims: int, expansions: tuple[int, ...]) -> float:
    """Multiply-adds of the least sweep :func:`choose_size` runs: the first size and one pair of k (three
    dictionaries of the smallest size), ``MIN_SWEEP_STEPS`` steps of ``MIN_SWEEP_BATCH`` vectors each."""
    return 3 * training_cost(expansions[0] * dims, dims, MIN_SWEEP_BATCH, MIN_SWEEP_STEPS)


def choose_size(vectors: torch.Tensor, base: SAEConfig, *, fvu_target: float, min_agreement: float,
                k_ref: int, ks: tuple[int, ...], expansions: tuple[int, ...], min_gain: float = 0.1,
                max_vectors: int = 16384, device: torch.device | str = "cpu", budget: float = math.inf) -> SizeChoice:
    """Choose ``expansion`` and ``k`` for dictionaries of ``vectors`` (n, dims); see the module docstring.
    ``base`` gives the optimisation (steps, batch, kind, seed); ``budget`` bounds the multiply-adds spent."""
    generator = torch.Generator().manual_seed(base.seed)
    order = torch.randperm(vectors.shape[0], generator=generator)[:max_vectors]
    held = max(1, len(order) // 5)
    test, train = vectors[order[:held]].float(), vectors[order[held:]].float()
    train_stream, test_stream = tensor_stream(train), tensor_stream(test)
    dims = vectors.shape[1]
    points: list[SweepPoint] = []
    spent = [0.0]
    batch = min(base.batch, len(train))
    if math.isfinite(budget):  # fewer steps per candidate when the usual sweep would not fit the budget
        probes = 2 * (math.ceil(math.log2(max(len(ks), 1))) + 1)
        per_step = sum(training_cost(e * dims, dims, batch, 1) for e in expansions[:2]) + probes * training_cost(
            expansions[0] * dims, dims, batch, 1)
        floor = min(MIN_SWEEP_STEPS, base.steps)
        if per_step * floor > budget and batch > MIN_SWEEP_BATCH:  # then smaller batches
            batch = max(MIN_SWEEP_BATCH, int(batch * budget / (per_step * floor)))
            per_step = per_step * batch / min(base.batch, len(train))
        base = replace(base, steps=min(base.steps, max(MIN_SWEEP_STEPS, int(budget / per_step))), batch=batch)

    def cost(expansion: int, fits: int = 1) -> float:
        return fits * training_cost(expansion * dims, dims, batch, base.steps)

    def fit(expansion: int, k: int, seed: int):
        config = replace(base, features=expansion * dims, k=min(k, expansion * dims), seed=seed)
        dictionary = train_dictionary(train_stream, config, device=device)
        spent[0] += cost(expansion)
        return dictionary, evaluate(dictionary, test_stream)

    def choice(expansion: int, k: int, reason: str) -> SizeChoice:
        return SizeChoice(expansion, k, tuple(points), reason, spent[0], base.steps, batch)

    expansion = expansions[0]
    previous = None
    note = ""
    for candidate in expansions:
        if previous is not None and spent[0] + cost(candidate, 3) > budget:  # its fit, then one pair of k
            note = f"; sizes above {expansion} per unit not tried (budget of {budget / 1e9:g} GMAC)"
            break
        _, stats = fit(candidate, k_ref, base.seed)
        points.append(SweepPoint("size", candidate, k_ref, stats.fvu))
        if previous is not None and previous - stats.fvu < min_gain * previous:
            break
        expansion, previous = candidate, stats.fvu
    probed: dict[int, SweepPoint] = {}

    def probe(index: int) -> SweepPoint | None:
        """Two seeds at ``ks[index]`` (None when the budget cannot pay for them; the first pair always runs)."""
        nonlocal note
        if index in probed:
            return probed[index]
        if probed and spent[0] + cost(expansion, 2) > budget:
            if "not tried" not in note:
                note += f"; some k not tried (budget of {budget / 1e9:g} GMAC)"
            return None
        k = ks[index]
        (first, stats), (second, twin_stats) = fit(expansion, k, base.seed), fit(expansion, k, base.seed + 1)
        agreement = seed_agreement(first.decoder, second.decoder, stats.frequency > 0, twin_stats.frequency > 0)
        point = SweepPoint("sparsity", expansion, k, stats.fvu, float(agreement.mean()) if len(agreement) else 0.0)
        points.append(point)
        probed[index] = point
        return point

    # the smallest k whose FVU reaches the target, by bisection (FVU falls as k grows), then the k above it when
    # the seeds of that one disagree (a larger k reconstructs better still but agrees less: no further)
    low, high = 0, len(ks) - 1
    while low < high:
        middle = (low + high) // 2
        point = probe(middle)
        if point is None:
            break
        low, high = (low, middle) if point.fvu <= fvu_target else (middle + 1, high)
    if low == high:
        probe(low)
    reached = sorted((i for i, point in probed.items() if point.fvu <= fvu_target))
    if reached:
        first = reached[0]
        if probed[first].seed_agreement < min_agreement and first + 1 < len(ks):
            probe(first + 1)
        for index in (first, first + 1):
            point = probed.get(index)
            if point is not None and point.fvu <= fvu_target and point.seed_agreement >= min_agreement:
                return choice(expansion, point.k, f"the smallest k whose held-out FVU is at most {fvu_target:g} "
                                                  f"and whose two seeds agree at {min_agreement:g} or more{note}")
        return choice(expansion, ks[first], f"the smallest k whose held-out FVU is at most {fvu_target:g} (no "
                                            f"candidate's seeds agree at {min_agreement:g}){note}")
    return choice(expansion, ks[max(probed)] if probed else ks[0],
                  f"no candidate reaches a held-out FVU of {fvu_target:g}: the largest k tried{note}")
