"""A unit's node score and its edge scores patch the same tensor: what the next layer reads from it (after its
nonlinearity). Planted: a unit the cue switches on from below its ReLU's kink, whose whole effect runs through one
edge; scored at the pre-activation (as before), its node score was 0 while its edge scored the full effect."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mechaudit.model_view import ModelView
from mechaudit.techniques.circuits import edge_attribution, target_logit
from mechaudit.techniques.edge_patching import exact_edge_effects


class OneEdge(nn.Module):
    """fc1:u0 = relu(x0) reaches the output only through fc2:u0 (weight 0.8); fc1:u1 = relu(x1) through fc2:u0
    and fc2:u1 (weights 0.5 and 0.7, both read by logit 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.out = nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2)
        with torch.no_grad():
            for layer in (self.fc1, self.fc2, self.out):
                layer.weight.zero_()
                layer.bias.zero_()
            self.fc1.weight.copy_(torch.eye(2))
            self.fc2.weight.copy_(torch.tensor([[0.8, 0.5], [0.0, 0.7]]))
            self.fc2.bias.fill_(1.0)  # fc2's units stay above their kink: the path is linear
            self.out.weight[0] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def _scores():
    model = OneEdge().eval()
    generator = torch.Generator().manual_seed(0)
    clean = torch.rand(64, 2, generator=generator)
    clean[:, 0] = -1.0                        # fc1:u0 is off on the clean inputs ...
    corrupted = clean.clone()
    corrupted[:, 0] = torch.rand(64, generator=generator) + 0.5   # ... and the cue switches it on
    corrupted[:, 1] += 0.3
    view = ModelView.discover(model, clean[:2])
    targets = torch.zeros(64, dtype=torch.long)
    scores = edge_attribution(view, clean, targets, target_logit, reference=corrupted)
    exact = exact_edge_effects(view, list(scores.edges), clean, targets, target_logit, reference=corrupted)
    return scores, exact


def test_a_unit_with_one_edge_scores_that_edge() -> None:
    scores, exact = _scores()
    edge = scores.edges[("fc1:u0", "fc2:u0")]
    assert edge == pytest.approx(exact[("fc1:u0", "fc2:u0")], rel=1e-5)  # exact: the path is linear
    assert edge > 1.0                                                     # 0.8 * (0.5 .. 1.5) per sample
    assert scores.nodes["fc1:u0"] == pytest.approx(edge, rel=1e-6)       # was 0 at the pre-activation
    assert scores.edges[("fc1:u0", "fc2:u1")] == 0.0


def test_control_a_unit_with_two_edges_scores_their_sum() -> None:
    """Control: fc1:u1 feeds two edges that move logit 0 the same way, so its node score is their sum and matches
    neither edge alone."""
    scores, exact = _scores()
    first, second = scores.edges[("fc1:u1", "fc2:u0")], scores.edges[("fc1:u1", "fc2:u1")]
    assert first > 0 and second > 0
    assert scores.nodes["fc1:u1"] == pytest.approx(first + second, rel=1e-6)
    assert scores.nodes["fc1:u1"] > 1.2 * max(first, second)
    assert first + second == pytest.approx(exact[("fc1:u1", "fc2:u0")] + exact[("fc1:u1", "fc2:u1")], rel=1e-5)
