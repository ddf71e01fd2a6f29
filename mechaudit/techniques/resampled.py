"""Bootstrap intervals of many statistics at once, over the same resamples of the samples.

:func:`~.uncertainty.bootstrap` resamples one statistic. A rule that judges many columns measured on the same samples
(a recovered fraction per patched component, an IoU per unit and concept) resamples them all with one set of draws:
:func:`draws` gives the resampled indices (the same ones :func:`~.uncertainty.bootstrap` draws with the same seed),
:func:`ratio_of_sums` the per-resample values of ``sum numerator / sum denominator`` per column (one matrix product),
and :func:`intervals` their percentile intervals. Joint draws also give an interval to a statistic of the whole
table (how many columns pass a threshold), which per-column resampling cannot.
"""

from __future__ import annotations

import numpy as np

from .uncertainty import LEVEL, RESAMPLES, Interval, percentile_interval


def draws(n: int, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """``(resamples, n)`` indices drawn with replacement, in the order :func:`~.uncertainty.bootstrap` draws them."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, n, n) for _ in range(resamples)]) if n else np.zeros((resamples, 0), int)


def counts(indices: np.ndarray, n: int) -> np.ndarray:
    """``(resamples, n)`` how many times each sample is drawn in each resample."""
    table = np.zeros((len(indices), n))
    for row, chosen in enumerate(indices):
        table[row] = np.bincount(chosen, minlength=n)
    return table


def ratio_of_sums(numerators: np.ndarray, denominators: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``(resamples, columns)``: ``sum numerator / sum denominator`` per column in each resample. ``numerators`` is
    ``(samples, columns)``; ``denominators`` the same shape or ``(samples,)`` (shared); ``weights`` from
    :func:`counts`. NaN where a resample's denominator is 0."""
    top = weights @ np.asarray(numerators, dtype=float)
    bottom = weights @ np.asarray(denominators, dtype=float)
    if bottom.ndim == 1:
        bottom = bottom[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(bottom != 0, top / np.where(bottom != 0, bottom, 1.0), np.nan)


def intervals(values: np.ndarray, n: int, over: str = "samples", level: float = LEVEL) -> list[Interval | None]:
    """The percentile interval of each column of ``values`` ``(resamples, columns)``
    (:func:`~.uncertainty.percentile_interval`: non-finite resamples left out and counted in the method; None for a
    column with more than 5% of them, or with fewer than 2 items)."""
    values = np.asarray(values, dtype=float)
    if values.ndim == 1:
        values = values[:, None]
    return [percentile_interval(column, n, over=over, level=level) for column in values.T]
