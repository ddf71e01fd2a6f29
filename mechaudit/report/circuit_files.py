"""``circuit.graphml`` and ``circuit.json``: the circuit graphs of R301 findings, for networkx, Gephi, yEd."""

from __future__ import annotations

import io
import json

import networkx as nx

from ..findings import AuditResult


def graph_from_json(circuit: dict) -> nx.DiGraph:
    graph = nx.DiGraph(behaviour=str(circuit.get("behaviour") or ""), left_out_edges=circuit.get("left_out_edges", 0))
    for node in circuit["nodes"]:
        graph.add_node(node["id"], **{k: v for k, v in node.items() if k != "id" and v is not None})
    for edge in circuit["edges"]:
        graph.add_edge(edge["source"], edge["target"], score=edge["score"])
    return graph


def circuit_files(result: AuditResult) -> dict[str, str]:
    """One GraphML and one JSON file per finding that carries a circuit (``circuit``, ``circuit-2``, ...)."""
    files: dict[str, str] = {}
    circuits = [f.evidence["circuit"] for f in result.findings if isinstance(f.evidence.get("circuit"), dict)]
    for index, circuit in enumerate(circuits, start=1):
        stem = "circuit" if index == 1 else f"circuit-{index}"
        buffer = io.BytesIO()
        nx.write_graphml(graph_from_json(circuit), buffer)
        files[f"{stem}.graphml"] = buffer.getvalue().decode("utf-8")
        files[f"{stem}.json"] = json.dumps(circuit, indent=2) + "\n"
    return files
