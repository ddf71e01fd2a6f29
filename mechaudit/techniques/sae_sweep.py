"""Dictionary size and sparsity chosen from the data: a small, bounded sweep on held-out vectors.

On at most ``max_vectors`` activation vectors of which a fifth is held out, sizes of ``expansion`` features per
dimension are tried for ``expansion`` in ``expansions`` (ascending). At each size, ``k`` is searched over ``ks``
(ascending); for each ``k`` tried, two seeds are trained and the held-out FVU and their seed agreement measured.
The smallest ``k`` whose FVU reaches ``fvu_target`` is found by bisection (the FVU falls as ``k`` grows); when its
seeds agree at ``min_agreement``, or the next ``k``'s do, that size and ``k`` are chosen: the smallest dictionary
that both explains the data and is reproducible. Otherwise the next size is tried: a dictionary too small for the
data's directions needs a larger ``k`` to reconstruct them and mixes them, differently from seed to seed (in a
16-wide layer of 128 sparse directions, 2 features per unit reach the FVU target only at k = 4, where two seeds
agree at 0.63; reconstruction alone, each doubling of the size gaining under 10% of FVU, stops there). When no size
gives agreeing seeds, the candidate reaching the target with the best agreement is chosen (when none reaches it, the
largest size and ``k`` tried).

Cost: at most ``2 * len(expansions) * (log2(len(ks)) + 2)`` dictionaries of ``steps`` steps each, and never more
than ``budget`` multiply-adds (:func:`training_cost`): when the searches of the first two sizes would not fit, each
candidate trains fewer steps (at least 50), then on smaller batches (at least 32 vectors); a candidate that would
still exceed it is not trained, and the reason says so (larger sizes are not tried once a size's search cannot be
paid for). The least sweep (one pair of k at the first size, 50 steps of 32 vectors: :func:`least_sweep_cost`) must
fit the budget: the caller checks it and skips the sweep otherwise.
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
    """Multiply-adds of the least sweep :func:`choose_size` runs: one pair of k at the first size (two dictionaries
    of the smallest size), ``MIN_SWEEP_STEPS`` steps of ``MIN_SWEEP_BATCH`` vectors each."""
    return 2 * training_cost(expansions[0] * dims, dims, MIN_SWEEP_BATCH, MIN_SWEEP_STEPS)


def choose_size(vectors: torch.Tensor, base: SAEConfig, *, fvu_target: float, min_agreement: float,
                ks: tuple[int, ...], expansions: tuple[int, ...], max_vectors: int = 16384, device: torch.device | str = "cpu", budget: float = math.inf) -> SizeChoice:
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
        per_step = probes * sum(training_cost(e * dims, dims, batch, 1) for e in expansions[:2])
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

    def pair(expansion: int, k: int) -> SweepPoint:
        """Two seeds' dictionaries of this size and ``k``: the first's held-out FVU and the seeds' agreement."""
        (first, stats), (second, twin_stats) = fit(expansion, k, base.seed), fit(expansion, k, base.seed + 1)
        agreement = seed_agreement(first.decoder, second.decoder, stats.frequency > 0, twin_stats.frequency > 0)
        point = SweepPoint("sparsity", expansion, k, stats.fvu, float(agreement.mean()) if len(agreement) else 0.0)
        points.append(point)
        return point

    note = ""

    def search(expansion: int) -> SweepPoint | None:
        """The k chosen at this size when its seeds agree (the smallest k reaching the FVU target, by bisection, or
        the next one up); None when none does or the budget stops the search."""
        nonlocal note
        probed: dict[int, SweepPoint] = {}

        def probe(index: int) -> SweepPoint | None:
            nonlocal note
            if index not in probed:
                if points and spent[0] + cost(expansion, 2) > budget:  # the first pair always runs
                    note = note or f"; candidates not tried (budget of {budget / 1e9:g} GMAC)"
                    return None
                probed[index] = pair(expansion, ks[index])
            return probed[index]

        low, high = 0, len(ks) - 1
        while low < high:
            middle = (low + high) // 2
            point = probe(middle)
            if point is None:
                return None
            low, high = (low, middle) if point.fvu <= fvu_target else (middle + 1, high)
        if probe(low) is None or probed[low].fvu > fvu_target:
            return None
        if probed[low].seed_agreement >= min_agreement:
            return probed[low]
        above = probe(low + 1) if low + 1 < len(ks) else None
        return above if above is not None and above.fvu <= fvu_target and (
            above.seed_agreement >= min_agreement) else None

    for expansion in expansions:
        if points and spent[0] + cost(expansion, 2) > budget:
            note = note or f"; sizes from {expansion} per unit not tried (budget of {budget / 1e9:g} GMAC)"
            break
        found = search(expansion)
        if found is not None:
            return choice(found.expansion, found.k, f"the smallest size and k whose held-out FVU is at most "
                                                    f"{fvu_target:g} and whose two seeds agree at {min_agreement:g} "
                                                    f"or more{note}")
        if note:
            break
    reached = [point for point in points if point.fvu <= fvu_target]
    if reached:
        best = max(reached, key=lambda point: point.seed_agreement)
        return choice(best.expansion, best.k, f"no candidate both reaches a held-out FVU of {fvu_target:g} and has "
                                              f"seeds agreeing at {min_agreement:g}: of those reaching it, the one "
                                              f"whose seeds agree most{note}")
    last = points[-1] if points else SweepPoint("sparsity", expansions[0], ks[0], math.nan)
    return choice(last.expansion, last.k, f"no candidate reaches a held-out FVU of {fvu_target:g}: the last "
                                          f"tried{note}")
