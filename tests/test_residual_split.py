"""A layer's node and edge scores read the next layer's input split by unit only when that input is a unit-wise
function of the layer's output alone. Planted: a residual block (``relu(c1(h)) + h`` feeds ``c2``) whose shapes
match, with ``c1`` zeroed, so it does nothing; scored on the sum (skip path included), its units scored 0.8-1.5.
Control: the same block without the skip keeps the split (edges read off the weights)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mechaudit.model_view import ModelView
from mechaudit.techniques.circuits import edge_attribution, target_logit
from mechaudit.techniques.edge_patching import exact_edge_effects


class Block(nn.Module):
    def __init__(self, residual: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c0, self.c1, self.c2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1)
        self.out = nn.Linear(4 * 6 * 6, 3)
        self.residual = residual
        with torch.no_grad():
            self.c1.weight.zero_()
            self.c1.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c0(x))
        mixed = torch.relu(self.c1(h)) + h if self.residual else torch.relu(self.c1(h) + 0.0)
        return self.out(torch.relu(self.c2(mixed)).flatten(1))


def _scores(residual: bool):
    model = Block(residual).eval()
    inputs = torch.randn(32, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    view = ModelView.discover(model, inputs[:2])
    return edge_attribution(view, inputs, torch.zeros(32, dtype=torch.long), target_logit)


def _methods(scores) -> dict[tuple[str, str], str]:
    return {(c["source"], c["target"]): c["method"] for c in scores.edge_choice()}


def test_a_zeroed_layer_in_a_residual_block_scores_nothing() -> None:
    scores = _scores(residual=True)
    assert max(abs(scores.nodes[f"c1:ch{u}"]) for u in range(4)) < 1e-6
    block = next(b for b in scores.edges.blocks if (b.source_layer, b.target_layer) == ("c1", "c2"))
    assert float(block.scores.abs().max()) < 1e-6
    assert _methods(scores)[("c1", "c2")].startswith("autograd")
    assert max(abs(scores.nodes[f"c0:ch{u}"]) for u in range(4)) > 0.1  # h still matters, through the skip


def test_control_without_the_skip_the_split_is_kept() -> None:
    methods = _methods(_scores(residual=False))
    assert methods[("c0", "c1")].startswith("weights")
    assert methods[("c1", "c2")].startswith("weights")



def _exact(residual: bool, zeroed: bool):
    model = Block(residual).eval()
    if not zeroed:
        with torch.no_grad():
            model.c1.weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(2))
            model.c1.bias.normal_(0, 0.3, generator=torch.Generator().manual_seed(3))
    inputs = torch.randn(32, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    view = ModelView.discover(model, inputs[:2])
    targets = torch.zeros(32, dtype=torch.long)
    scores = edge_attribution(view, inputs, targets, target_logit)
    edges = [edge for edge in scores.edges if edge[0].startswith("c1:")]
    return model, inputs, scores, exact_edge_effects(view, edges, inputs, targets, target_logit)


@torch.no_grad()
def _by_hand(model: Block, x: torch.Tensor, u: int, v: int) -> float:
    """Edge c1:u -> c2:v patched by hand: c1's channel u set to its mean output (with the skip: only that channel's
    output moves, the skip path stays clean) or, without the skip, the channel u of c2's input set to its mean;
    only c2's channel v sees the change."""
    h = torch.relu(model.c0(x))
    a = model.c1(h)
    mixed = torch.relu(a) + h if model.residual else torch.relu(a)
    patched = mixed.clone()
    if model.residual:
        a_u = a[:, u].mean(0).expand_as(a[:, u])
        patched[:, u] = torch.relu(a_u) + h[:, u]
    else:
        patched[:, u] = mixed[:, u].mean(0)
    c2 = model.c2(mixed)
    c2_edge = c2.clone()
    c2_edge[:, v] = model.c2(patched)[:, v]
    logit = model.out(torch.relu(c2).flatten(1))[:, 0]
    return float((model.out(torch.relu(c2_edge).flatten(1))[:, 0] - logit).abs().sum())


def test_exact_edges_in_a_residual_block_patch_the_unit_not_the_skip() -> None:
    """The ground truth shares the numeric split check: in ``relu(c1(h)) + h`` an edge from c1 patches c1's unit
    alone (the skip path stays clean), as by hand; a zeroed c1 (its units do nothing) has edges of exactly 0, where
    reading c2's input split by shape alone would have patched the skip path too."""
    model, inputs, _, exact = _exact(residual=True, zeroed=False)
    assert len(exact) == 16
    for (source, target), value in exact.items():
        u, v = int(source.split(":ch")[1]), int(target.split(":ch")[1])
        assert value == pytest.approx(_by_hand(model, inputs, u, v), rel=1e-4, abs=1e-5)
    assert max(exact.values()) > 0.05
    _, _, _, zeroed = _exact(residual=True, zeroed=True)
    assert max(zeroed.values()) < 1e-6


def test_control_exact_edges_without_the_skip_are_read_through_the_weights() -> None:
    """Control: without the skip the split holds; the exact edges patch c2's input split by unit, as by hand."""
    model, inputs, _, exact = _exact(residual=False, zeroed=False)
    for (source, target), value in exact.items():
        u, v = int(source.split(":ch")[1]), int(target.split(":ch")[1])
        assert value == pytest.approx(_by_hand(model, inputs, u, v), rel=1e-4, abs=1e-5)
    assert max(exact.values()) > 0.05


class Bypass(nn.Module):
    """``fc2`` reads ``relu(fc1(x[:, :4])) + weight * x4``: with ``weight`` != 0, a binary input feature bypasses
    ``fc1``, so ``fc2``'s input does not split by ``fc1``'s units."""

    def __init__(self, weight: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 3)
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x[:, :4])) + self.weight * x[:, 4:5])


def _read_by_on_sorted_groups(weight: float) -> dict[str, str]:
    """Scored in batches of 32 on 64 samples sorted by the binary feature x4: the first batch is one group, whose
    samples all agree on the bypass."""
    features = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
    inputs = torch.cat([features, (torch.arange(64) >= 32).float()[:, None]], 1)
    model = Bypass(weight).eval()
    view = ModelView.discover(model, inputs[:2])
    return edge_attribution(view, inputs, torch.zeros(64, dtype=torch.long), target_logit, batch_size=32).read_by


def test_a_bypass_constant_within_the_first_batch_is_still_found() -> None:
    assert "fc1" not in _read_by_on_sorted_groups(weight=5.0)


def test_control_without_the_bypass_sorted_groups_keep_the_split() -> None:
    assert _read_by_on_sorted_groups(weight=0.0) == {"fc1": "fc2"}


def test_a_hook_that_fails_to_install_leaves_no_hook_behind(monkeypatch) -> None:
    from mechaudit.techniques.unit_split import unit_splits

    model = Block(residual=False).eval()
    inputs = torch.randn(8, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    view = ModelView.discover(model, inputs[:2])
    installs = []
    plain_hook = ModelView.hook

    def failing_second(self, layer, fn):
        installs.append(layer.name)
        if len(installs) == 2:
            raise RuntimeError("planted: the second hook fails to install")
        return plain_hook(self, layer, fn)
    monkeypatch.setattr(ModelView, "hook", failing_second)
    with pytest.raises(RuntimeError, match="planted"):
        unit_splits(view, inputs, inputs.flip(0))
    assert not any(module._forward_hooks or module._forward_pre_hooks for module in model.modules())
