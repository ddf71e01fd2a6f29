"""How sure a measurement is: bootstrap confidence intervals, and whether a declared behaviour is there at all.

* :func:`bootstrap` / :func:`bootstrap_mean`: a seeded percentile bootstrap (Efron & Tibshirani 1993) over the
  samples (or units) a metric reduces. Written on numpy rather than ``scipy.stats.bootstrap`` because the metrics
  here are statistics of *several paired* per-sample arrays (a ratio of two means, the worst class of a table),
  which one index resample expresses directly; the method (percentile) is the same.
* :func:`bootstrap_basic`: the basic bootstrap (Davison & Hinkley 1997, 5.2), ``2 * estimate - quantiles``, for a
  statistic that a resample's duplicated samples bias (linear CKA): it subtracts the bias the resamples show, so it
  estimates the population value rather than the value expected at this many samples.
* :func:`bootstrap_within`: the percentile bootstrap when the budget allows ``PERCENTILE_RESAMPLES`` resamples, else
  the normal bootstrap (estimate +- z * the resamples' standard deviation), whose two moments few resamples estimate
  far better than they estimate 2.5% tails. :func:`resample_budget` sizes the resamples by their cost.
* :func:`behaviour_presence`: whether the gap that a ratio would divide by (clean minus corrupted, clean minus
  ablated) exceeds its sampling noise: ``|mean gap| > z * standard error`` over the paired per-sample gaps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import torch

RESAMPLES = 500
LEVEL = 0.95
#: A gap within this many standard errors of 0 is noise: 3 keeps a behaviour-free model (gap 0 +- noise) from
#: passing as present by chance (two-sided p ~ 0.003), while the embedded examples' behaviours lie 20-100 standard
#: errors out (see the rule docs of L207, R302, R304).
PRESENCE_Z = 3.0


@dataclass(frozen=True)
class Interval:
    """A confidence interval of a metric: ``[low, high]`` at ``level``, found by ``method``."""

    low: float
    high: float
    method: str
    level: float = LEVEL

    def straddles(self, threshold: float) -> bool:
        """True when the interval holds values on both sides of the threshold (the verdict is a coin flip)."""
        return self.low <= threshold < self.high

    def complement(self) -> Interval:
        """The interval of ``1 - metric``."""
        return Interval(1 - self.high, 1 - self.low, self.method, self.level)

    def to_dict(self) -> dict:
        return {"low": round(float(self.low), 6), "high": round(float(self.high), 6), "method": self.method,
                "level": self.level}


def bootstrap(statistic: Callable[[np.ndarray], float], n: int, *, over: str = "samples",
              resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0) -> Interval | None:
    """Percentile bootstrap of ``statistic(indices)`` over ``n`` items (``over`` names them in the method);
    None with fewer than 2 items or when no resample gives a finite value."""
    values = _resampled(statistic, n, resamples, seed)
    if values is None:
        return None
    low, high = _tails(values, level)
    return Interval(low, high, f"percentile bootstrap over {n} {over}, {resamples} resamples", level)


#: Fewer resamples than this estimate a 2.5% tail poorly (5 values beyond it at 200): :func:`bootstrap_within` and
#: :func:`bootstrap_basic` then use the normal bootstrap.
PERCENTILE_RESAMPLES = 200


def resample_budget(cost: float, budget: float, *, most: int = 200, least: int = 20, cap: float = 2e11) -> int:
    """Resamples of a bootstrap whose resample costs ``cost`` operations: ``most`` within ``budget``, fewer for
    dearer ones, never under ``least``; 0 (no interval) when ``least`` would exceed ``cap``."""
    if least * cost > cap:
        return 0
    return max(least, min(most, int(budget / max(cost, 1.0))))


def bootstrap_within(statistic: Callable[[np.ndarray], float], n: int, estimate: float, *, resamples: int,
                     over: str = "samples", level: float = LEVEL, seed: int = 0,
                     bounds: tuple[float, float] = (-math.inf, math.inf)) -> Interval | None:
    """:func:`bootstrap` with ``PERCENTILE_RESAMPLES`` or more resamples, else the normal bootstrap: ``estimate +-
    z * sd`` of the resamples (Efron & Tibshirani 1993, 13.2), clipped to ``bounds``. None as :func:`bootstrap`."""
    if resamples >= PERCENTILE_RESAMPLES:
        return bootstrap(statistic, n, over=over, resamples=resamples, level=level, seed=seed)
    values = _resampled(statistic, n, resamples, seed)
    if values is None or len(values) < 2:
        return None
    spread = _z(level) * float(values.std(ddof=1))
    return Interval(max(bounds[0], estimate - spread), min(bounds[1], estimate + spread),
                    f"normal bootstrap (estimate +- {_z(level):.2f} standard errors of {resamples} resamples) over {n} "
                    f"{over}", level)


def bootstrap_basic(statistic: Callable[[np.ndarray], float], n: int, estimate: float, *, over: str = "samples",
                    resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0,
                    bounds: tuple[float, float] = (-math.inf, math.inf)) -> Interval | None:
    """Basic bootstrap interval ``2 * estimate - high`` to ``2 * estimate - low`` (``low``, ``high``: the resamples'
    quantiles), clipped to ``bounds``; below ``PERCENTILE_RESAMPLES`` resamples, the bias-corrected normal interval
    ``2 * estimate - mean +- z * sd``. For a statistic that a resample's duplicated samples bias (linear CKA rises
    with fewer distinct samples; a resample holds about 63%): the resamples lie beside the estimate by about the
    estimate's own bias, which this subtracts, so the interval is that of the population value (not of the value
    expected at ``n`` samples) and may exclude the estimate itself. None as :func:`bootstrap`."""
    values = _resampled(statistic, n, resamples, seed)
    if values is None or len(values) < 2:
        return None
    if resamples >= PERCENTILE_RESAMPLES:
        low, high = _tails(values, level)
        low, high, how = 2 * estimate - high, 2 * estimate - low, "basic bootstrap"
    else:
        centre, spread = 2 * estimate - float(values.mean()), _z(level) * float(values.std(ddof=1))
        low, high, how = centre - spread, centre + spread, "bias-corrected normal bootstrap"
    low, high = (float(min(max(value, bounds[0]), bounds[1])) for value in (low, high))  # both clipped: low <= high
    return Interval(low, high,
                    f"{how} over {n} {over}, {resamples} resamples (of the population value: the resamples' bias "
                    "subtracted)", level)


def _tails(values: np.ndarray, level: float) -> tuple[float, float]:
    """The ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of resampled ``values``."""
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def _z(level: float) -> float:
    """The standard normal quantile of a two-sided ``level``."""
    return NormalDist().inv_cdf(0.5 + level / 2)


def percentile_interval(values: np.ndarray, n: int, *, over: str = "samples", level: float = LEVEL,
                        max_dropped: float = 0.05) -> Interval | None:
    """The percentile interval of one statistic's ``values`` over resamples of ``n`` items (``over`` names them in
    the method). Non-finite resamples (a ratio whose resampled denominator is 0) are left out and counted in the
    method; None with fewer than 2 items, or when more than ``max_dropped`` of the resamples are left out (the
    interval would describe the resamples that happened to be defined, not the statistic)."""
    values = np.asarray(values, dtype=float).ravel()
    finite = values[np.isfinite(values)]
    dropped = len(values) - len(finite)
    if n < 2 or not len(finite) or dropped > max_dropped * len(values):
        return None
    low, high = _tails(finite, level)
    method = f"percentile bootstrap over {n} {over}, {len(values)} resamples"
    if dropped:
        method += f" ({dropped} without a finite value left out)"
    return Interval(low, high, method, level)


def _resampled(statistic: Callable[[np.ndarray], float], n: int, resamples: int, seed: int) -> np.ndarray | None:
    """The finite values of ``statistic`` on ``resamples`` seeded draws of ``n`` indices with replacement, or None
    (fewer than 2 items, no finite value)."""
    if n < 2:
        return None
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n, n)) for _ in range(resamples)], dtype=float)
    values = values[np.isfinite(values)]
    return values if len(values) else None


def bootstrap_mean(values, *, over: str = "samples", seed: int = 0, **kwargs) -> Interval | None:
    """Bootstrap interval of the mean of per-sample (or per-unit) values."""
    array = _numpy(values).astype(float).ravel()
    return bootstrap(lambda idx: float(array[idx].mean()), len(array), over=over, seed=seed, **kwargs)


def proportion_interval(flags, *, level: float = LEVEL) -> Interval | None:
    """Wilson score interval (Wilson 1927, through ``scipy.stats.binomtest``) of the share of true ``flags`` (a
    boolean per sample): unlike a bootstrap of the mean of booleans, it is not [0, 0] when none is true (0 of 200
    gives 0 to 1.9%). None without samples."""
    from scipy.stats import binomtest

    array = _numpy(flags).astype(bool).ravel()
    if not len(array):
        return None
    found = binomtest(int(array.sum()), len(array)).proportion_ci(confidence_level=level, method="wilson")
    return Interval(float(found.low), float(found.high), f"Wilson score interval over {len(array)} samples", level)


def bootstrap_ratio_of_mean_distances(numerator: tuple, denominator: tuple, *, transform=lambda r: r,
                                      seed: int = 0) -> Interval | None:
    """Bootstrap interval of ``transform(mean|a - b| / mean|c - d|)`` over paired per-sample behaviours, the form of
    the node-ablation metrics (faithfulness, behaviour lost)."""
    top = np.abs(_numpy(numerator[0]) - _numpy(numerator[1])).astype(float).ravel()
    bottom = np.abs(_numpy(denominator[0]) - _numpy(denominator[1])).astype(float).ravel()

    def statistic(idx: np.ndarray) -> float:
        scale = bottom[idx].mean()
        return float(transform(top[idx].mean() / scale)) if scale > 0 else math.nan

    return bootstrap(statistic, len(top), seed=seed)


@dataclass(frozen=True)
class Presence:
    """Whether a behaviour's gap (with minus without it, mean over paired samples) stands out of its noise."""

    gap: float
    standard_error: float
    samples: int
    z: float = PRESENCE_Z

    @property
    def present(self) -> bool:
        return abs(self.gap) > self.z * self.standard_error

    def to_dict(self) -> dict:
        return {"gap": self.gap, "standard_error": self.standard_error, "samples": self.samples, "z": self.z,
                "present": self.present}

    def describe(self) -> str:
        return (f"mean gap {self.gap:.3g} +- {self.standard_error:.2g} (standard error over {self.samples} samples; "
                f"present needs |gap| > {self.z:g} standard errors)")


def behaviour_presence(with_behaviour, without, z: float = PRESENCE_Z) -> Presence:
    """Is the behaviour there? ``with_behaviour`` and ``without`` are the per-sample metric on the clean input and
    on its corrupted (or fully ablated) twin. The gap is their mean difference; its standard error is that of the
    paired differences (0 with one sample, or when every difference is equal)."""
    difference = _numpy(with_behaviour).astype(float).ravel() - _numpy(without).astype(float).ravel()
    n = len(difference)
    gap = float(difference.mean()) if n else 0.0
    error = float(difference.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    return Presence(gap, error, n, z)


def _numpy(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().double().cpu().numpy()
    return np.asarray(values)
