"""L208's pathway graph lists its nodes in the pathway's order, whatever the process (no set iteration order)."""

from __future__ import annotations

import networkx as nx

from mechaudit.checks.cue_sensitivity import pathway_subgraph


def test_the_pathway_graph_follows_the_pathway_s_order() -> None:
    graph = nx.DiGraph(behaviour="m", left_out_edges=3)
    for index in range(12):
        graph.add_node(f"fc1:u{index}", score=float(index))
    graph.add_edge("fc1:u1", "fc1:u7", score=0.5)
    graph.add_edge("fc1:u7", "fc1:u0", score=0.25)
    graph.add_edge("fc1:u2", "fc1:u3", score=1.0)  # outside the pathway
    pathway = ["fc1:u7", "fc1:u1", "fc1:u0", "fc1:u99"]  # u99: not in the graph's strongest edges
    sub = pathway_subgraph(graph, pathway)
    assert list(sub) == ["fc1:u7", "fc1:u1", "fc1:u0"] and sub.nodes["fc1:u1"]["score"] == 1.0
    assert list(sub.edges(data="score")) == [("fc1:u7", "fc1:u0", 0.25), ("fc1:u1", "fc1:u7", 0.5)]
    assert sub.graph == graph.graph
