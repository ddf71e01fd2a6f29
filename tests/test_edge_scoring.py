"""Tensor edge scoring equals the dense per-edge reference it replaced; flows, shares and connected circuits equal
their dict-based references; wide autograd pairs get screened edges instead of none."""

from __future__ import annotations

import pytest
import torch
from fixtures.dense_edges import dense_edge_attribution, dict_attribution_flow, dict_connected_circuit
from fixtures.planted_circuit import planted, planted_data
from test_gradient_edges import _setup
from torch import nn

from mechaudit.model_view import ModelView
from mechaudit.techniques.circuits import (
    at_position,
    attribution_flow,
    circuit_graph,
    edge_attribution,
    source_shares,
    target_logit,
)
from mechaudit.techniques.connected_circuits import connected_circuit
from mechaudit.techniques.weight_edges import weight_edge_scores


class SmallCNN(nn.Module):
    """conv -> relu -> conv (stride 2) -> relu -> maxpool -> flatten -> linear -> relu -> linear."""

    def __init__(self, padding: int | str = 1) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(2, 5, 3, padding=padding)
        self.c2 = nn.Conv2d(5, 6, 3, padding=1, stride=2 if padding == 1 else 1)
        self.f1 = nn.LazyLinear(7)
        self.f2 = nn.Linear(7, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.c2(torch.relu(self.c1(x)))), 2)
        return self.f2(torch.relu(self.f1(torch.flatten(x, 1))))


class Conv1dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv1d(3, 4, 3, padding=1), nn.Conv1d(4, 5, 3, dilation=2)
        self.out = nn.Linear(5 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.c2(torch.relu(self.c1(x)))).flatten(1))


def _cnn(padding: int | str = 1):
    torch.manual_seed(0)
    model = SmallCNN(padding)
    x = torch.randn(40, 2, 8, 8)
    model(x[:1])
    mask = torch.zeros(1, 8, 8)
    mask[..., 5:, 5:] = 1
    return model.eval(), x, {"corner": mask}


def _cases():
    torch.manual_seed(1)
    conv1d_x = torch.randn(30, 3, 10)
    return {
        "mlp": (planted().eval(), planted_data(64), {}),
        "cnn": _cnn(),
        "cnn-same-padding": _cnn("same"),
        "conv1d": (Conv1dNet().eval(), conv1d_x, {}),
    }


def _scores(name: str, paired: bool):
    model, x, masks = _cases()[name]
    view = ModelView.discover(model, x[:2])
    targets = model(x).argmax(1).detach()
    reference = x.flip(0) if paired else None
    kwargs = dict(reference=reference, masks=masks, batch_size=16)
    return view, dense_edge_attribution(view, x, targets, target_logit, **kwargs), \
        edge_attribution(view, x, targets, target_logit, **kwargs)


@pytest.mark.parametrize("paired", [False, True])
@pytest.mark.parametrize("name", ["mlp", "cnn", "cnn-same-padding", "conv1d"])
def test_tensor_edges_equal_the_dense_reference(name: str, paired: bool) -> None:
    _view, (_, old_edges, old_unconnected), new = _scores(name, paired)
    assert list(new.edges) == list(old_edges)          # the same edges, in the same order
    old = torch.tensor([old_edges[e] for e in new.edges], dtype=torch.float64)
    found = torch.tensor(new.edges.values(), dtype=torch.float64)
    assert float(old.abs().max()) > 0
    assert torch.allclose(found, old, rtol=1e-5, atol=1e-6 * float(old.abs().max()))
    assert new.unconnected == old_unconnected == []
    top = new.edges.top(10)
    ranked = sorted(old_edges.items(), key=lambda item: -abs(item[1]))[:10]
    assert [edge for edge, _ in top][:3] == [edge for edge, _ in ranked][:3]


def test_autograd_edges_equal_the_dense_reference() -> None:
    model, view, clean, corrupted, target = _setup(("blocks.0.attn", "blocks.0.mlp.0", "blocks.1.attn"))
    behaviour = at_position(target_logit, -1)
    _, old_edges, _ = dense_edge_attribution(view, clean, target, behaviour, reference=corrupted)
    new = edge_attribution(view, clean, target, behaviour, reference=corrupted)
    assert set(new.edges) == set(old_edges)
    assert all(new.edges[e] == pytest.approx(old_edges[e], rel=1e-9, abs=1e-12) for e in old_edges)


def test_chunked_weight_edges_equal_unchunked() -> None:
    """A chunk bound of a few numbers (one unit or sample at a time) gives the same scores as one pass."""
    torch.manual_seed(2)
    for module, delta, grad in (
        (nn.Linear(12, 5), torch.randn(9, 4, 3), torch.randn(9, 5, 1)),            # 4 units x 3 features
        (nn.Conv2d(3, 4, 3, padding=1), torch.randn(6, 3, 5, 5), torch.randn(6, 4, 25)),
        (nn.Conv1d(3, 4, 3), torch.randn(6, 3, 7), torch.randn(6, 4, 5)),
    ):
        whole = weight_edge_scores(module, delta, grad)
        assert torch.allclose(weight_edge_scores(module, delta, grad, chunk_elements=7), whole, rtol=1e-5)


def test_flow_and_source_shares_equal_the_dict_reference() -> None:
    _view, (_, old_edges, _), scores = _scores("cnn", paired=False)
    last = scores.layers[-1].name
    sinks = {n: s for n, s in scores.nodes.items() if scores.node_layer[n] == last}
    old = dict_attribution_flow(scores.layers, scores.node_layer, old_edges, sinks)
    new = attribution_flow(scores, sinks)
    assert max(abs(old.get(n, 0.0) - new.get(n, 0.0)) for n in set(old) | set(new)) < 1e-6
    assert new["input:corner"] > 0
    shares = source_shares(scores, "input:corner")
    for node in [n for n in scores.nodes if scores.node_layer[n] != last]:
        expected = dict_attribution_flow(scores.layers, scores.node_layer, old_edges, {node: 1.0})
        assert shares[node] == pytest.approx(expected.get("input:corner", 0.0), abs=1e-6)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_connected_circuits_equal_the_dict_reference(name: str) -> None:
    _view, _, scores = _scores(name, paired=False)
    hidden = [n for n in scores.nodes if scores.node_layer[n] != scores.layers[-1].name]
    for size in range(1, len(hidden) + 1):
        assert connected_circuit(scores, hidden, size) == dict_connected_circuit(scores, hidden, size)
    graph = circuit_graph(scores, 5)
    assert graph.number_of_edges() == 5 and graph.graph["left_out_edges"] == len(scores.edges) - 5


def test_wide_autograd_pair_is_screened_not_unconnected() -> None:
    """Pairs wider than ``max_passes`` on both sides get the edges into their best-scored downstream units (equal
    to the full scoring's), the rest 0, and say so; none is left unconnected."""
    model, view, clean, corrupted, target = _setup(("blocks.0.attn", "blocks.1.attn"))
    behaviour = at_position(target_logit, -1)
    full = edge_attribution(view, clean, target, behaviour, reference=corrupted)
    screened = edge_attribution(view, clean, target, behaviour, reference=corrupted, max_passes=2)
    assert not screened.unconnected
    upstream, layer = view.layers
    chosen = sorted(sorted(range(layer.size), key=lambda v: -screened.nodes[layer.address(v)])[:2])
    for u in range(upstream.size):
        for v in range(layer.size):
            edge = (upstream.address(u), layer.address(v))
            expected = full.edges[edge] if v in chosen else 0.0
            assert screened.edges[edge] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    (choice,) = screened.edge_choice()
    assert choice["edges"] == 2 * upstream.size and "screened" in choice["method"]
    assert any(screened.edges[(upstream.address(u), layer.address(chosen[0]))] for u in range(upstream.size))
