"""A layer's node and edge scores read the next layer's input split by unit only when that input is a unit-wise
function of the layer's output alone. Planted: a residual block (``relu(c1(h)) + h`` feeds ``c2``) whose shapes
match, with ``c1`` zeroed, so it does nothing; scored on the sum (skip path included), its units scored 0.8-1.5.
Control: the same block without the skip keeps the split (edges read off the weights)."""

from __future__ import annotations

import torch
from torch import nn

from mechaudit.model_view import ModelView
from mechaudit.techniques.circuits import edge_attribution, target_logit


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
