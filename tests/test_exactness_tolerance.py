"""The exactness tests' tolerance (``fixtures.exactness``): the same float32 sum in another order passes where an
absolute 1e-5 does not, and a real difference fails."""

from __future__ import annotations

import pytest
import torch
from fixtures.exactness import assert_equal_up_to_rounding


def test_a_reordered_float32_sum_passes_and_a_real_difference_fails() -> None:
    terms = 100 * torch.randn(64, 4096, generator=torch.Generator().manual_seed(0))  # sums up to about 2e4
    vectorised = terms.sum(1)
    sequential = terms.cumsum(1)[:, -1]                   # the same additions, one after the other
    assert (sequential - vectorised).abs().max() > 1e-5   # an absolute 1e-5 fails on rounding alone
    assert_equal_up_to_rounding(sequential, vectorised)
    with pytest.raises(AssertionError):
        assert_equal_up_to_rounding(vectorised + 1e-4 * vectorised.abs().max(), vectorised)
    with pytest.raises(AssertionError):                   # one value of many is off
        assert_equal_up_to_rounding(vectorised.index_add(0, torch.tensor([3]), torch.tensor([1.0])), vectorised)
