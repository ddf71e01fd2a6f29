"""Adding two edge scorings (attribution patching in both directions): only of the same layer pairs, and two
screened blocks that scored different targets sum to a block that says it scored their union."""

from __future__ import annotations

import pytest
import torch

from mechaudit.techniques.edge_scores import EdgeBlock, EdgeScores


def _screened(units: tuple[int, ...], target_layer: str = "b") -> EdgeScores:
    scores = torch.zeros(2, 6, dtype=torch.float64)
    scores[:, list(units)] = 1.0
    method = (f"autograd, screened: edges into the {len(units)} of 6 units of {target_layer} with the highest node "
              f"scores, from all 2 units of a; edges into the other {6 - len(units)} units are not scored (0)")
    return EdgeScores([EdgeBlock("a", target_layer, ["a:u0", "a:u1"], [f"{target_layer}:u{v}" for v in range(6)],
                                 scores, method, len(units), units)])


def test_screened_blocks_sum_to_the_union_of_their_targets() -> None:
    (block,) = (_screened((0, 1)) + _screened((1, 4))).blocks
    assert block.scored_units == (0, 1, 4)
    assert block.describe()["edges"] == 2 * 3
    assert "edges into the 3 of 6 units of b" in block.method
    assert block.scores[:, 1].tolist() == [2.0, 2.0]


def test_control_same_targets_keep_their_description() -> None:
    a = _screened((0, 1))
    (block,) = (a + _screened((0, 1))).blocks
    assert block.method == a.blocks[0].method
    assert block.describe()["edges"] == 4


def test_different_layer_pairs_are_not_added() -> None:
    with pytest.raises(ValueError, match="different layer pairs"):
        _screened((0, 1)) + _screened((0, 1), target_layer="c")
