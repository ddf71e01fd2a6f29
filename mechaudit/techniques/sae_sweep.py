"""Dictionary size and sparsity chosen from the data: a small, bounded sweep on held-out vectors.

Two stages, on at most ``max_vectors`` activation vectors of which a fifth is held out:

1. *Size.* At the reference sparsity ``k_ref``, dictionaries of ``expansion`` features per dimension are trained
   for ``expansion`` in ``expansions`` (ascending); the smallest one after which doubling the size lowers the
   held-out FVU by less than ``min_gain`` (relative) is kept: a dictionary too small for the data's directions
   reconstructs worse and recovers fewer of them, one larger than needed only splits them.
2. *Sparsity.* With that size, ``k`` runs over ``ks`` (ascending); for each, two seeds are trained and the
   held-out FVU and their seed agreement measured. The smallest ``k`` whose FVU reaches ``fvu_target`` and whose
   seeds agree at ``min_agreement`` is chosen; else the smallest reaching the FVU target; else the last tried.

Cost: at most ``len(expansions) + 2 * len(ks)`` dictionaries of ``steps`` steps each (the sparsity stage stops at
the first ``k`` that meets both targets, or at the second that meets the FVU target).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch

from .sae import SAEConfig, evaluate, seed_agreement, tensor_stream, train_dictionary


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

    def as_evidence(self) -> dict:
        return {"expansion": self.expansion, "k": self.k, "reason": self.reason,
                "candidates": [asdict(point) for point in self.points]}


def choose_size(vectors: torch.Tensor, base: SAEConfig, *, fvu_target: float, min_agreement: float,
                k_ref: int, ks: tuple[int, ...], expansions: tuple[int, ...], min_gain: float = 0.1,
                max_vectors: int = 16384, device: torch.device | str = "cpu") -> SizeChoice:
    """Choose ``expansion`` and ``k`` for dictionaries of ``vectors`` (n, dims); see the module docstring.
    ``base`` gives the optimisation (steps, batch, kind, seed)."""
    generator = torch.Generator().manual_seed(base.seed)
    order = torch.randperm(vectors.shape[0], generator=generator)[:max_vectors]
    held = max(1, len(order) // 5)
    test, train = vectors[order[:held]].float(), vectors[order[held:]].float()
    train_stream, test_stream = tensor_stream(train), tensor_stream(test)
    dims = vectors.shape[1]
    points: list[SweepPoint] = []

    def fit(expansion: int, k: int, seed: int):
        config = replace(base, features=expansion * dims, k=min(k, expansion * dims), seed=seed)
        dictionary = train_dictionary(train_stream, config, device=device)
        return dictionary, evaluate(dictionary, test_stream)

    expansion = expansions[0]
    previous = None
    for candidate in expansions:
        _, stats = fit(candidate, k_ref, base.seed)
        points.append(SweepPoint("size", candidate, k_ref, stats.fvu))
        if previous is not None and previous - stats.fvu < min_gain * previous:
            break
        expansion, previous = candidate, stats.fvu
    reached: list[SweepPoint] = []
    for k in ks:
        (first, stats), (second, twin_stats) = fit(expansion, k, base.seed), fit(expansion, k, base.seed + 1)
        agreement = seed_agreement(first.decoder, second.decoder, stats.frequency > 0, twin_stats.frequency > 0)
        point = SweepPoint("sparsity", expansion, k, stats.fvu, float(agreement.mean()) if len(agreement) else 0.0)
        points.append(point)
        if point.fvu <= fvu_target:
            reached.append(point)
            if point.seed_agreement >= min_agreement:
                return SizeChoice(expansion, k, tuple(points), f"the smallest k whose held-out FVU is at most "
                                  f"{fvu_target:g} and whose two seeds agree at {min_agreement:g} or more")
            if len(reached) == 2:  # a larger k reconstructs better still but agrees less: stop here
                break
    if reached:
        return SizeChoice(expansion, reached[0].k, tuple(points), f"the smallest k whose held-out FVU is at most "
                          f"{fvu_target:g} (no candidate's seeds agree at {min_agreement:g})")
    return SizeChoice(expansion, ks[-1], tuple(points), f"no candidate reaches a held-out FVU of {fvu_target:g}: "
                      "the largest k tried")
