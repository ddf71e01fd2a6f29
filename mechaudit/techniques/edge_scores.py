"""Edge scores held as one (sources x targets) tensor per pair of consecutive node groups.

A layer pair of 2,048 x 2,048 units has four million edges: as tensors they take 32 MiB and rank, sum or flow in
milliseconds; as a dict keyed by address strings they took seconds to build and gigabytes to hold. The string keys
``(source address, target address)`` are made only for the edges a caller reads (the strongest ones, or one it
looks up); :class:`EdgeScores` is still a read-only mapping for callers that want every edge (small models, tests).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class EdgeBlock:
    """Every edge from the nodes of one group (an audited layer, or the input regions) to the next layer's units:
    ``scores[u, v]`` is the edge ``sources[u] -> targets[v]``; ``method`` says how the edges were chosen and scored."""

    source_layer: str
    target_layer: str
    sources: list[str]
    targets: list[str]
    scores: torch.Tensor
    method: str
    scored_targets: int | None = None  # targets whose incoming edges were scored (None: all)
    scored_units: tuple[int, ...] | None = None  # which targets (indices) were scored, when not all

    def describe(self) -> dict:
        """The block as the evidence states it: which pair, how many edges, how they were chosen."""
        targets = len(self.targets) if self.scored_targets is None else self.scored_targets
        return {"source": self.source_layer, "target": self.target_layer, "edges": len(self.sources) * targets,
                "method": self.method}


class EdgeScores(Mapping[tuple[str, str], float]):
    """All edge scores of a circuit, block by block (in layer order), as a read-only mapping of address pairs."""

    def __init__(self, blocks: list[EdgeBlock]) -> None:
        self.blocks = blocks
        self._index: dict[str, tuple[int, int]] | None = None
        self._target_index: list[dict[str, int]] | None = None

    def _lookup(self) -> tuple[dict[str, tuple[int, int]], list[dict[str, int]]]:
        if self._index is None or self._target_index is None:
            self._index = {source: (b, row) for b, block in enumerate(self.blocks)
                           for row, source in enumerate(block.sources)}
            self._target_index = [{target: col for col, target in enumerate(block.targets)} for block in self.blocks]
        return self._index, self._target_index

    def __getitem__(self, key: tuple[str, str]) -> float:
        sources, targets = self._lookup()
        source, target = key
        if source not in sources or target not in targets[sources[source][0]]:
            raise KeyError(key)
        b, row = sources[source]
        return float(self.blocks[b].scores[row, targets[b][target]])

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for block in self.blocks:
            for source in block.sources:
                for target in block.targets:
                    yield source, target

    def __len__(self) -> int:
        return sum(block.scores.numel() for block in self.blocks)

    def values(self):  # type: ignore[override]  # the flat tensor's values, in the order of the keys
        return self.flat().tolist()

    def items(self):  # type: ignore[override]
        return list(zip(self, self.values()))

    def __add__(self, other: EdgeScores) -> EdgeScores:
        """Block-wise sums of two scorings of the same pairs (e.g. attribution patching in both directions). Two
        screened blocks may have scored different targets: the sum has scored their union."""
        pairs = [(b.source_layer, b.target_layer, b.sources, b.targets) for b in self.blocks]
        if pairs != [(b.source_layer, b.target_layer, b.sources, b.targets) for b in other.blocks]:
            raise ValueError("edge scores of different layer pairs or nodes cannot be added")
        return EdgeScores([_summed_block(a, b) for a, b in zip(self.blocks, other.blocks)])

    def flat(self) -> torch.Tensor:
        """Every score in key order (block by block, row-major)."""
        if not self.blocks:
            return torch.zeros(0, dtype=torch.float64)
        return torch.cat([block.scores.reshape(-1).double() for block in self.blocks])

    def any_scored(self) -> bool:
        return any(bool(block.scores.ne(0).any()) for block in self.blocks)

    def _key(self, flat_index: int, offsets: np.ndarray) -> tuple[str, str]:
        b = int(np.searchsorted(offsets, flat_index, side="right")) - 1
        row, col = divmod(flat_index - int(offsets[b]), len(self.blocks[b].targets))
        return self.blocks[b].sources[row], self.blocks[b].targets[col]

    def _offsets(self) -> np.ndarray:
        return np.cumsum([0] + [block.scores.numel() for block in self.blocks])

    def top(self, count: int) -> list[tuple[tuple[str, str], float]]:
        """The ``count`` strongest non-zero edges by |score| (ties in key order), with their scores."""
        flat = self.flat()
        magnitude = flat.abs()
        nonzero = int(magnitude.ne(0).sum())
        count = min(count, nonzero)
        if count <= 0:
            return []
        floor = torch.topk(magnitude, count).values[-1]
        candidates = torch.nonzero(magnitude >= floor).squeeze(1).numpy()
        chosen = candidates[np.argsort(-magnitude.numpy()[candidates], kind="stable")[:count]]
        offsets = self._offsets()
        return [(self._key(int(i), offsets), float(flat[i])) for i in chosen]

    def ranks(self) -> list[torch.Tensor]:
        """Per block, each edge's place among the non-zero edges sorted by decreasing |score| (ties in key order);
        zero edges rank after all of them (``len(self)``)."""
        magnitude = self.flat().abs().numpy()
        order = np.argsort(-magnitude, kind="stable")[:int((magnitude != 0).sum())]
        rank = np.full(magnitude.shape, len(magnitude), dtype=np.int64)
        rank[order] = np.arange(len(order))
        offsets = self._offsets()
        return [torch.from_numpy(rank[offsets[b]:offsets[b + 1]]).reshape(block.scores.shape)
                for b, block in enumerate(self.blocks)]


def _summed_block(a: EdgeBlock, b: EdgeBlock) -> EdgeBlock:
    """``a + b`` for one pair; the targets scored in either (and the method saying so) when they differ."""
    if a.scored_units == b.scored_units and a.method == b.method:
        return EdgeBlock(a.source_layer, a.target_layer, a.sources, a.targets, a.scores + b.scores, a.method,
                         a.scored_targets, a.scored_units)
    if a.scored_units is None or b.scored_units is None:
        units = None
    else:
        units = tuple(sorted(set(a.scored_units) | set(b.scored_units)))
    if units is None:
        method = f"{a.method}; added to: {b.method}" if a.method != b.method else a.method
        return EdgeBlock(a.source_layer, a.target_layer, a.sources, a.targets, a.scores + b.scores, method)
    total = len(a.targets)
    method = (f"{a.method.split(':')[0]}: edges into the {len(units)} of {total} units of {a.target_layer} screened "
              f"in either of two scorings (by node score), from all {len(a.sources)} units of {a.source_layer}; "
              f"edges into the other {total - len(units)} units are not scored (0)")
    return EdgeBlock(a.source_layer, a.target_layer, a.sources, a.targets, a.scores + b.scores, method,
                     len(units), units)
