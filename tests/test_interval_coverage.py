"""Monte-Carlo coverage of two intervals with known truth: the ratio of sums over jointly resampled pairs (L207's
recovered fraction) and the Wilson interval of a proportion (R305's flip rates). A 95% interval should hold the
truth in about 95 of 100 synthetic datasets; 0.88-0.99 leaves room for 100 draws (standard error ~2 points)."""

from __future__ import annotations

import numpy as np

from mechaudit.techniques import resampled
from mechaudit.techniques.uncertainty import proportion_interval

DATASETS = 100


def test_the_ratio_of_sums_interval_covers_the_true_recovered_fraction() -> None:
    rng = np.random.default_rng(0)
    truth, pairs = 0.3, 80
    covered = 0
    for seed in range(DATASETS):
        gaps = rng.gamma(2.0, 1.0, pairs)  # clean - corrupted per pair, mean 2
        effects = truth * gaps + rng.normal(0, 0.5, pairs)  # patched effect: the fraction of the gap, plus noise
        weights = resampled.counts(resampled.draws(pairs, resamples=300, seed=seed), pairs)
        (interval,) = resampled.intervals(resampled.ratio_of_sums(effects[:, None], gaps, weights), pairs)
        covered += interval.low <= truth <= interval.high
    assert 0.88 <= covered / DATASETS <= 0.99


def test_the_wilson_interval_covers_a_small_true_flip_rate() -> None:
    """At a rate of 0.5% of 200 samples a third of the datasets have no flip: a bootstrap of the booleans gives them
    [0, 0] and covers the truth in 61 of 100 datasets; Wilson's interval in 95."""
    rng = np.random.default_rng(1)
    truth, samples = 0.005, 200
    covered = 0
    for _ in range(DATASETS):
        interval = proportion_interval(rng.random(samples) < truth)
        covered += interval.low <= truth <= interval.high
    assert 0.88 <= covered / DATASETS <= 0.99
