"""Debiased linear CKA (unbiased HSIC, Song et al. 2012) against known answers: unrelated representations read
about 0 however wide they are (the biased estimator reads them near 1 where units outnumber samples), identical and
rotated ones read 1, and the feature-space and Gram-matrix formulas agree with an independent U-centring."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechaudit.techniques.cka import cka_interval, gram, gram_cka, linear_cka
from mechaudit.techniques.fingerprints import centred_gram


def _independent(samples: int, width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(samples, width, generator=g, dtype=torch.float64),
            torch.randn(samples, width, generator=g, dtype=torch.float64))


def _u_centred_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Reference: the inner product of U-centred Gram matrices (Szekely and Rizzo 2014), written out directly."""
    def u_centred(k: torch.Tensor) -> torch.Tensor:
        n = len(k)
        k = k - torch.diag(k.diagonal())
        u = k - k.sum(1, keepdim=True) / (n - 2) - k.sum(0, keepdim=True) / (n - 2) + k.sum() / ((n - 1) * (n - 2))
        return u - torch.diag(u.diagonal())

    uk, ul = u_centred(x @ x.T), u_centred(y @ y.T)
    return float((uk * ul).sum() / torch.sqrt((uk * uk).sum() * (ul * ul).sum()))


@pytest.mark.parametrize("samples, width", [(64, 1024), (256, 1024), (64, 16)])
def test_unrelated_representations_read_about_zero_however_wide(samples: int, width: int) -> None:
    values = [linear_cka(*_independent(samples, width, seed)) for seed in range(3)]
    biased = [linear_cka(*_independent(samples, width, seed), debiased=False) for seed in range(3)]
    assert abs(np.mean(values)) < 0.03 and max(abs(v) for v in values) < 0.06, values
    if width > samples:  # the plug-in estimator: 0.94 at 64 samples, 0.80 at 256
        assert min(biased) > 0.75
    x, y = _independent(samples, width, 0)
    assert gram_cka(gram(x), gram(y)) == pytest.approx(values[0], abs=1e-9)


def test_identical_and_rotated_representations_read_one() -> None:
    x, _ = _independent(64, 256, 1)
    rotation = torch.linalg.qr(torch.randn(256, 256, generator=torch.Generator().manual_seed(2),
                                           dtype=torch.float64))[0]
    for y in (x, 3 * x @ rotation, x + 5.0):  # the same, rotated and scaled, shifted
        assert linear_cka(x, y) == pytest.approx(1.0, abs=1e-9)
        assert gram_cka(gram(x), gram(y)) == pytest.approx(1.0, abs=1e-9)
        assert gram_cka(centred_gram(x), centred_gram(y)) == pytest.approx(1.0, abs=1e-5)  # stored as float32


def test_the_formulas_agree_with_u_centring_and_ignore_centring() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(50, 7, generator=g, dtype=torch.float64) + 3
    y = x @ torch.randn(7, 40, generator=g, dtype=torch.float64) + torch.randn(50, 40, generator=g,
                                                                                 dtype=torch.float64)
    reference = _u_centred_cka(x, y)
    assert linear_cka(x, y) == pytest.approx(reference, abs=1e-9)           # feature space (7 x 40 < 50 x 47)
    wide = x @ torch.randn(7, 200, generator=g, dtype=torch.float64), torch.randn(50, 150, generator=g,
                                                                                 dtype=torch.float64)
    assert linear_cka(*wide) == pytest.approx(_u_centred_cka(*wide), abs=1e-9)  # by Gram matrices (50 x 350 < 200 x 150)
    assert gram_cka(x @ x.T, y @ y.T) == pytest.approx(reference, abs=1e-9)  # uncentred Gram matrices
    assert gram_cka(gram(x), gram(y)) == pytest.approx(reference, abs=1e-9)
    assert linear_cka(x, y, debiased=False) > reference  # the plug-in estimate reads higher


def test_debiased_cka_is_reported_below_zero_and_its_interval_clipped() -> None:
    """Unrelated layers scatter around 0: the value is not clipped (that would bias it upward again); the
    interval, of the population CKA, lies in [0, 1]."""
    values = {seed: linear_cka(*_independent(64, 256, seed)) for seed in range(6)}
    negative = [seed for seed, value in values.items() if value < 0]
    assert negative, values
    x, y = _independent(64, 256, negative[0])
    interval = cka_interval(gram(x), gram(y))
    assert 0.0 <= interval.low <= interval.high <= 0.2


def test_too_few_samples_fall_back_on_the_biased_estimator() -> None:
    x, y = _independent(3, 5, 0)
    assert linear_cka(x, y) == pytest.approx(linear_cka(x, y, debiased=False))
    assert cka_interval(gram(x), gram(y)) is None


def test_the_interval_does_not_depend_on_how_the_gram_matrices_were_centred() -> None:
    """The copies-masked resample is not a U-statistic, so an uncentred Gram (``x @ x.T`` of offset data) moved it
    by about 0.3 before ``cka_interval`` centred its inputs; now both give the same interval."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(120, 8, generator=g, dtype=torch.float64)
    y = x[:, :4] + torch.randn(120, 4, generator=g, dtype=torch.float64)
    x, y = x + 3.0, y - 2.0
    centred = cka_interval(gram(x), gram(y), seed=0)
    uncentred = cka_interval(x @ x.T, y @ y.T, seed=0)
    assert centred is not None and uncentred is not None
    assert (uncentred.low, uncentred.high) == pytest.approx((centred.low, centred.high), abs=1e-9)


def test_a_resample_without_variation_is_dropped_not_counted_as_zero() -> None:
    """At 4 samples a fifth of the resamples have a non-positive self-HSIC: they give no value (NaN, which the
    bootstrap drops) instead of a CKA of 0 that would pull the interval down."""
    from mechaudit.techniques.cka import _weighted_cka

    k = gram(torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    k = k - torch.diag(k.diagonal())
    w = torch.tensor([4.0, 0.0, 0.0, 0.0], dtype=torch.float64)  # one sample drawn four times: no pair of distinct samples
    assert np.isnan(_weighted_cka(k, k, w))
