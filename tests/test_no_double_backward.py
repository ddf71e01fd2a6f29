"""A layer pair whose path has no double backward, with a downstream side too wide for one VJP per unit, is scored
screened (VJPs into the best-scored downstream units), never listed as "does not depend on the earlier one"."""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from mechaudit.model_view import ModelView
from mechaudit.techniques.circuits import edge_attribution, target_logit


class ScaledBySum(torch.autograd.Function):
    """``x * sum(x)`` over features (mixes the units, so no split by unit), with a backward that has no backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x * x.sum(1, keepdim=True)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * x.sum(1, keepdim=True) + (grad * x).sum(1, keepdim=True)


class Net(nn.Module):
    def __init__(self, double_backward: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2, self.out = nn.Linear(3, 2), nn.Linear(2, 8), nn.Linear(8, 2)
        self.double_backward = double_backward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x))
        mixed = h * h.sum(1, keepdim=True) if self.double_backward else ScaledBySum.apply(h)
        return self.out(torch.relu(self.fc2(mixed)))


def _scores(double_backward: bool):
    model = Net(double_backward).eval()
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(1))
    view = ModelView.discover(model, x[:2], only=("fc1", "fc2"))
    return edge_attribution(view, x, torch.zeros(16, dtype=torch.long), target_logit, max_passes=4)


def test_no_double_backward_is_screened_not_unconnected() -> None:
    scores = _scores(double_backward=False)
    assert scores.unconnected == []
    (choice,) = [c for c in scores.edge_choice() if (c["source"], c["target"]) == ("fc1", "fc2")]
    assert choice["method"].startswith("autograd, screened: edges into the 4 of 8 units")
    block = next(b for b in scores.edges.blocks if (b.source_layer, b.target_layer) == ("fc1", "fc2"))
    assert float(block.scores.abs().max()) > 0
    assert block.scored_units is not None and len(block.scored_units) == 4


def test_control_with_double_backward_every_edge_is_scored() -> None:
    scores = _scores(double_backward=True)
    (choice,) = [c for c in scores.edge_choice() if (c["source"], c["target"]) == ("fc1", "fc2")]
    assert choice["method"] == "autograd: every edge"
