"""Functional modules of a layer: groups of units that activate together.

Units are clustered by co-activation (average-linkage agglomerative clustering with SciPy on the distance ``1 - r``,
the tree scikit-learn's ``AgglomerativeClustering`` builds, cut once per number of modules; ``r`` the Pearson
correlation of two units' activations over the samples); the co-activation graph (networkx: units as nodes, an
edge where ``r`` exceeds ``min_correlation``, weighted by ``r``) scores each clustering by its modularity (Newman
2006; computed by matrix products, as networkx's ``community.modularity`` computes it on the graph), and the
clustering with the highest modularity is kept (Watanabe et al. 2018 and Filan et al. 2021 apply modularity to
neural networks' units and weights)."""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np
import torch


@dataclass
class Modules:
    """The best clustering of a layer's live units and its modularity on the co-activation graph."""

    modules: list[list[int]]   #: unit indices per module, largest module first (then by first unit)
    modularity: float          #: 0 when the graph has no edge or one module is best
    graph: nx.Graph
    live_units: list[int]


def correlation(activations: torch.Tensor) -> torch.Tensor:
    """Pearson correlation between the columns of ``activations`` (samples, units), float64."""
    x = activations.double() - activations.double().mean(0, keepdim=True)
    x = x / x.norm(dim=0, keepdim=True).clamp_min(1e-12)
    return (x.T @ x).clamp(-1, 1)


def coactivation_graph(r: torch.Tensor, units: list[int], min_correlation: float) -> nx.Graph:
    graph = nx.Graph()
    graph.add_nodes_from(units)
    rows, cols = torch.triu((r > min_correlation).to(torch.int8), diagonal=1).nonzero(as_tuple=True)
    graph.add_edges_from((units[i], units[j], {"weight": float(r[i, j])}) for i, j in zip(rows.tolist(),
                                                                                          cols.tolist()))
    return graph


def functional_modules(activations: torch.Tensor, min_correlation: float = 0.3, max_modules: int = 8) -> Modules:
    """Cluster the live units (non-constant columns) of ``activations`` and pick the most modular clustering."""
    live = _live(activations)
    r = correlation(activations[:, live]) if live else torch.zeros(0, 0)
    graph = coactivation_graph(r, live, min_correlation)
    clusters, score = _best_clustering(r, min_correlation, max_modules)
    if clusters is None:
        return Modules([live], 0.0, graph, live)
    modules = [[live[i] for i in cluster] for cluster in clusters]
    return Modules(sorted(modules, key=lambda module: (-len(module), module[0])), score, graph, live)


def best_modularity(activations: torch.Tensor, min_correlation: float = 0.3, max_modules: int = 8) -> float:
    """The modularity :func:`functional_modules` finds, without building its graph (what a bootstrap recomputes)."""
    live = _live(activations)
    return _best_clustering(correlation(activations[:, live]), min_correlation, max_modules)[1] if live else 0.0


def _edge_weights(r: torch.Tensor, min_correlation: float) -> torch.Tensor:
    """The co-activation graph as a dense matrix: ``r`` where it exceeds ``min_correlation``, off the diagonal."""
    return torch.where(r > min_correlation, r, torch.zeros_like(r)).double().fill_diagonal_(0)


def _modularity(weights: torch.Tensor, labels: torch.Tensor) -> float:
    """``sum_c A_cc / 2m - (d_c / 2m)^2`` with ``A`` the edge weights, ``A_cc`` their sum within cluster ``c``,
    ``d_c`` the summed degrees of its units and ``2m`` the total weight."""
    total = float(weights.sum())
    if total <= 0:
        return 0.0
    member = torch.nn.functional.one_hot(labels, int(labels.max()) + 1).double()
    inside = (member * (weights @ member)).sum(0)
    degrees = weights.sum(1) @ member
    return float((inside / total - (degrees / total) ** 2).sum())


def _live(activations: torch.Tensor) -> list[int]:
    return (activations.double().std(0) > 1e-9).nonzero().flatten().tolist()


def _best_clustering(r: torch.Tensor, min_correlation: float, max_modules: int,
                     ) -> tuple[list[list[int]] | None, float]:
    """The clustering of 2 to ``max_modules`` clusters of average-linkage agglomerative clustering on ``1 - r``
    (one tree from SciPy, cut at each size, as scikit-learn's ``AgglomerativeClustering`` cuts it) with the highest
    modularity, and that modularity; ``(None, 0.0)`` with fewer than 4 units, no edge, or no clustering above 0."""
    n = len(r)
    if n < 4 or not bool(torch.triu(r > min_correlation, diagonal=1).any()):
        return None, 0.0
    from scipy.cluster.hierarchy import cut_tree, linkage
    from scipy.spatial.distance import squareform

    distance = (1 - r).clamp_min(0).double().fill_diagonal_(0).numpy()
    tree = linkage(squareform((distance + distance.T) / 2, checks=False), method="average")
    sizes = list(range(2, min(max_modules, n // 2) + 1))
    cuts = cut_tree(tree, n_clusters=sizes)  # one column per size
    weights = _edge_weights(r, min_correlation)
    best_labels, best = None, 0.0
    for column in range(len(sizes)):
        labels = torch.from_numpy(cuts[:, column].astype(np.int64))
        score = _modularity(weights, labels)
        if score > best + 1e-9:
            best_labels, best = labels, score
    if best_labels is None:
        return None, 0.0
    return [(best_labels == c).nonzero().flatten().tolist() for c in range(int(best_labels.max()) + 1)], best
