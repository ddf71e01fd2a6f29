"""Circuits as subgraphs: the strongest edges, pruned to the nodes on a path from the inputs to the output.

As ACDC (Conmy et al. 2023) and edge attribution patching (Syed et al. 2023) build a circuit from edges, a circuit
of ``size`` nodes here is grown by adding edges in decreasing order of |score| and keeping only the candidate nodes
that lie on a path from a source (an input node, or a unit of the first audited layer when no edge leaves the
input) to a sink (a unit of the last audited layer). The fewest edges whose path nodes reach ``size`` are found by
bisection (the path nodes only grow as edges are added), so a circuit costs O(log E) graph traversals. A circuit
may hold a few more than ``size`` nodes (one edge can join two new nodes); when every scored edge is kept and the
path nodes are still fewer than ``size``, the remaining candidates are added by node score (they have no scored
edge on a path, so they are the least important). Layers joined by no scored edge (:attr:`CircuitScores.unconnected`)
leave no path: then the circuit is the top nodes by score, and :func:`connected_circuit` says so.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch

from ..addresses import INPUT
from .circuits import CircuitScores, node_groups


def connected_circuit(scores: CircuitScores, candidates: Sequence[str], size: int) -> tuple[list[str], bool]:
    """The circuit of at least ``size`` of ``candidates`` (see the module docstring), ranked by node score, and
    whether it was built from paths (False: the layers are not all joined by scored edges; top nodes instead)."""
    ranked = sorted(candidates, key=lambda n: -abs(scores.nodes.get(n, 0.0)))
    size = min(size, len(ranked))
    ranks = scores.edges.ranks()
    scored = sum(int(r.lt(len(scores.edges)).sum()) for r in ranks)
    if size <= 0:
        return [], bool(scored) and not scores.unconnected
    if not scored or scores.unconnected:
        return ranked[:size], False
    wanted = set(candidates)
    sources = _sources(scores, ranks)
    low, high = 1, scored
    while low < high:  # fewest strongest edges whose path nodes reach the size
        middle = (low + high) // 2
        if len(_on_paths(scores, ranks, middle, sources) & wanted) >= size:
            high = middle
        else:
            low = middle + 1
    kept = _on_paths(scores, ranks, low, sources) & wanted
    circuit = [node for node in ranked if node in kept]
    circuit += [node for node in ranked if node not in kept][:max(0, size - len(circuit))]
    return circuit, True


def random_like(circuit: Sequence[str], candidates: Sequence[str], node_layer: dict[str, str],
                generator: torch.Generator) -> set[str]:
    """A random circuit with as many nodes in each layer as ``circuit`` (the same size and layers)."""
    by_layer: dict[str, list[str]] = defaultdict(list)
    for node in candidates:
        by_layer[node_layer[node]].append(node)
    counts: dict[str, int] = defaultdict(int)
    for node in circuit:
        counts[node_layer[node]] += 1
    chosen: set[str] = set()
    for layer, count in counts.items():
        pool = by_layer[layer]
        chosen.update(pool[i] for i in torch.randperm(len(pool), generator=generator)[:count].tolist())
    return chosen


def _sources(scores: CircuitScores, ranks: list[torch.Tensor]) -> tuple[str, torch.Tensor]:
    """The group paths start from and which of its nodes: the input regions with a scored edge, else every unit
    of the first audited layer."""
    for block, rank in zip(scores.edges.blocks, ranks):
        if block.source_layer == INPUT:
            starts = rank.lt(len(scores.edges)).any(1)
            if starts.any():
                return INPUT, starts
    return scores.layers[0].name, torch.ones(scores.layers[0].size, dtype=torch.bool)


def _on_paths(scores: CircuitScores, ranks: list[torch.Tensor], count: int,
              sources: tuple[str, torch.Tensor]) -> set[str]:
    """Nodes on a path from a source to a sink (a unit of the last layer) using only the ``count`` strongest
    edges (sources and sinks included): reachability forward and backward, one layer pair at a time."""
    blocks = scores.edges.blocks
    kept = [rank < count for rank in ranks]
    forward = {name: torch.zeros(len(nodes), dtype=torch.bool) for name, nodes in node_groups(scores).items()}
    backward = {name: reached.clone() for name, reached in forward.items()}
    forward[sources[0]] = sources[1].clone()
    backward[scores.layers[-1].name][:] = True
    for block, edges in zip(blocks, kept):
        forward[block.target_layer] |= (forward[block.source_layer].unsqueeze(1) & edges).any(0)
    for block, edges in zip(reversed(blocks), reversed(kept)):
        backward[block.source_layer] |= (backward[block.target_layer].unsqueeze(0) & edges).any(1)
    groups = node_groups(scores)
    return {node for name, nodes in groups.items()
            for node, on in zip(nodes, (forward[name] & backward[name]).tolist()) if on}
