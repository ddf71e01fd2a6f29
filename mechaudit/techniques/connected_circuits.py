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
from .circuits import CircuitScores


def connected_circuit(scores: CircuitScores, candidates: Sequence[str], size: int) -> tuple[list[str], bool]:
    """The circuit of at least ``size`` of ``candidates`` (see the module docstring), ranked by node score, and
    whether it was built from paths (False: the layers are not all joined by scored edges; top nodes instead)."""
    ranked = sorted(candidates, key=lambda n: -abs(scores.nodes.get(n, 0.0)))
    size = min(size, len(ranked))
    edges = sorted(((e, abs(s)) for e, s in scores.edges.items() if s != 0.0), key=lambda item: -item[1])
    if size <= 0:
        return [], bool(edges) and not scores.unconnected
    if not edges or scores.unconnected:
        return ranked[:size], False
    wanted = set(candidates)
    sources, sinks = _ends(scores, [edge for edge, _ in edges])
    low, high = 1, len(edges)
    while low < high:  # fewest strongest edges whose path nodes reach the size
        middle = (low + high) // 2
        if len(_on_paths([e for e, _ in edges[:middle]], sources, sinks) & wanted) >= size:
            high = middle
        else:
            low = middle + 1
    kept = _on_paths([e for e, _ in edges[:low]], sources, sinks) & wanted
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


def _ends(scores: CircuitScores, edges: list[tuple[str, str]]) -> tuple[set[str], set[str]]:
    """Sources (input nodes, else the first layer's units) and sinks (the last layer's units)."""
    inputs = {source for source, _ in edges if scores.node_layer.get(source) == INPUT}
    first, last = scores.layers[0].name, scores.layers[-1].name
    sources = inputs or {n for n, layer in scores.node_layer.items() if layer == first}
    sinks = {n for n, layer in scores.node_layer.items() if layer == last}
    return sources, sinks


def _on_paths(edges: list[tuple[str, str]], sources: set[str], sinks: set[str]) -> set[str]:
    """Nodes that lie on a path from a source to a sink using only ``edges`` (sources and sinks included)."""
    forward: dict[str, list[str]] = defaultdict(list)
    backward: dict[str, list[str]] = defaultdict(list)
    for source, target in edges:
        forward[source].append(target)
        backward[target].append(source)
    return _reach(forward, sources) & _reach(backward, sinks)


def _reach(adjacent: dict[str, list[str]], start: set[str]) -> set[str]:
    seen, stack = set(start), list(start)
    while stack:
        for nxt in adjacent.get(stack.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen
