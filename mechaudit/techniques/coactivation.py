"""Functional modules of a layer: groups of units that activate together.

Units are clustered by co-activation (agglomerative clustering with scikit-learn on the distance ``1 - r``, ``r``
the Pearson correlation of two units' activations over the samples, average linkage); the co-activation graph
(networkx: units as nodes, an edge where ``r`` exceeds ``min_correlation``, weighted by ``r``) scores each
clustering by its modularity (Newman 2006), and the clustering with the highest modularity is kept (Watanabe et
al. 2018 and Filan et al. 2021 apply modularity to neural networks' units and weights)."""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import torch


@dataclass
class Modules:
    """The best clustering of a layer's live units and its modularity on the co-activation graph."""

    modules: list[list[int]]   #: unit indices per module, largest module first
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
    from sklearn.cluster import AgglomerativeClustering

    live = (activations.double().std(0) > 1e-9).nonzero().flatten().tolist()
    r = correlation(activations[:, live]) if live else torch.zeros(0, 0)
    graph = coactivation_graph(r, live, min_correlation)
    best = Modules([live], 0.0, graph, live)
    if len(live) < 4 or graph.number_of_edges() == 0:
        return best
    distance = (1 - r).clamp_min(0).numpy()
    for k in range(2, min(max_modules, len(live) // 2) + 1):
        assignment = AgglomerativeClustering(n_clusters=k, metric="precomputed", linkage="average").fit_predict(
            distance)
        modules = [[live[i] for i in range(len(live)) if assignment[i] == c] for c in range(k)]
        score = nx.community.modularity(graph, [set(m) for m in modules], weight="weight")
        if score > best.modularity + 1e-9:
            best = Modules(sorted(modules, key=len, reverse=True), float(score), graph, live)
    return best
