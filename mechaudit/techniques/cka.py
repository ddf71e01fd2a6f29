"""Linear centered kernel alignment (CKA; Kornblith, Norouzi, Lee, Hinton 2019) between two representations of
the same samples: 1 when one is an orthogonal transform and isotropic scaling of the other, near 0 for unrelated
ones; invariant to the number of units, so any two layers compare.

CKA here is *debiased* by default: the HSIC terms are the unbiased estimator of Song et al. (2012), as Nguyen,
Raghu and Kornblith (2021) and Davari et al. (2023) use it. The biased (plug-in) estimator of Kornblith et al. reads
high where units outnumber samples: two independent random representations 1,024 wide on 64 samples have biased
CKA 0.94, debiased 0.02 (``benchmarks/cka_bias.py``). The unbiased HSIC is the inner product of the two U-centred
Gram matrices (Szekely and Rizzo 2014), so debiased CKA lies in [-1, 1]; it is reported as it is, slightly negative
for unrelated representations, since clipping it at 0 would bring back an upward bias.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .uncertainty import Interval, bootstrap_basic

#: Fewest samples of the unbiased HSIC (it divides by ``n (n - 3)``); fewer fall back on the biased estimator.
MIN_DEBIASED_SAMPLES = 4


def _hsic_terms(n: float, products: torch.Tensor | float, k_sum: float, l_sum: float, cross: float) -> float:
    """Unbiased HSIC (Song et al. 2012, eq. 5) of two Gram matrices with zeroed diagonals, from their sums:
    ``products`` = sum of ``K~ * L~``, ``k_sum`` / ``l_sum`` = sum of all entries, ``cross`` = ``1' K~ L~ 1``."""
    return float((products + k_sum * l_sum / ((n - 1) * (n - 2)) - 2 * cross / (n - 2)) / (n * (n - 3)))


def _ratio(xy: float, xx: float, yy: float) -> float:
    """CKA from its three HSIC terms; 0 when either representation shows no variation."""
    return xy / math.sqrt(xx * yy) if xx > 0 and yy > 0 else 0.0


def linear_cka(x: torch.Tensor, y: torch.Tensor, *, debiased: bool = True) -> float:
    """CKA of ``x`` (samples, a) and ``y`` (samples, b), in float64, by feature-space formulas (memory a x b; by
    Gram matrices where ``samples x (a + b) < a x b``, memory samples x samples): the biased
    ``||Y'X||_F^2 / (||X'X||_F ||Y'Y||_F)`` on centred columns, or (default; biased below
    :data:`MIN_DEBIASED_SAMPLES` samples) the same with the unbiased HSIC; 0 when either is constant."""
    x = x.double().flatten(1)
    y = y.double().flatten(1)
    x, y = x - x.mean(0, keepdim=True), y - y.mean(0, keepdim=True)
    if not debiased or len(x) < MIN_DEBIASED_SAMPLES:
        def square(a: torch.Tensor, b: torch.Tensor) -> float:
            return float(torch.linalg.matrix_norm(b.T @ a)) ** 2

        return _ratio(square(x, y), square(x, x), square(y, y))
    if len(x) * (x.shape[1] + y.shape[1]) < x.shape[1] * y.shape[1]:  # fewer samples than units: Gram matrices
        return gram_cka(x @ x.T, y @ y.T)
    n = float(len(x))
    norms = {"x": (x * x).sum(1), "y": (y * y).sum(1)}  # the Gram matrices' diagonals
    rows = {"x": x @ x.sum(0) - norms["x"], "y": y @ y.sum(0) - norms["y"]}  # row sums with zeroed diagonal
    features = {"x": x, "y": y}

    def hsic(a: str, b: str) -> float:
        products = float(torch.linalg.matrix_norm(features[b].T @ features[a])) ** 2 - float(norms[a] @ norms[b])
        return _hsic_terms(n, products, float(rows[a].sum()), float(rows[b].sum()), float(rows[a] @ rows[b]))

    return _ratio(hsic("x", "y"), hsic("x", "x"), hsic("y", "y"))


def gram_cka(k: torch.Tensor, l: torch.Tensor, *, debiased: bool = True) -> float:  # noqa: E741 - the papers' names
    """CKA from two Gram matrices (samples, samples) of linear kernels, centred or not: the biased
    ``<K_c, L_c>_F / (||K_c||_F ||L_c||_F)`` (``K_c``: double-centred; equal to ``K`` for :func:`gram`'s output), or
    (default; biased below :data:`MIN_DEBIASED_SAMPLES` samples) the same with the unbiased HSIC, which no
    centring changes; 0 when either is zero."""
    k, l = k.double(), l.double()  # noqa: E741
    if not debiased or len(k) < MIN_DEBIASED_SAMPLES:
        k, l = _double_centred(k), _double_centred(l)  # noqa: E741
        return _ratio(float((k * l).sum()), float((k * k).sum()), float((l * l).sum()))
    k, l, n = _zero_diagonal(k), _zero_diagonal(l), float(len(k))  # noqa: E741
    rows = {"k": k.sum(1), "l": l.sum(1)}
    matrices = {"k": k, "l": l}

    def hsic(a: str, b: str) -> float:
        products = float((matrices[a] * matrices[b]).sum())
        return _hsic_terms(n, products, float(rows[a].sum()), float(rows[b].sum()), float(rows[a] @ rows[b]))

    return _ratio(hsic("k", "l"), hsic("k", "k"), hsic("l", "l"))


def _double_centred(k: torch.Tensor) -> torch.Tensor:
    return k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()


def _zero_diagonal(k: torch.Tensor) -> torch.Tensor:
    return k - torch.diag(k.diagonal())


def _weighted_cka(k: torch.Tensor, l: torch.Tensor, w: torch.Tensor,  # noqa: E741
                  stacked: torch.Tensor | None = None) -> float:
    """Debiased CKA of the samples counted ``w[i]`` times each (a bootstrap resample; all ones: the samples as they
    are), from Gram matrices with zeroed diagonals, pairs of copies of one sample left out like the diagonal. With
    ``stacked`` (``[K*L; K*K; L*L; K; L]``): five matrix-vector products. NaN where a self-HSIC is not positive
    (small resamples of few samples), so a bootstrap drops the resample instead of counting a 0."""
    n = len(k)
    stacked = torch.cat([k * l, k * k, l * l, k, l]) if stacked is None else stacked
    kl, kk, ll, kw, lw = (stacked @ w).split(n)
    total = float(w.sum())
    k_sum, l_sum = float(w @ kw), float(w @ lw)

    def hsic(products: torch.Tensor, a: torch.Tensor, b: torch.Tensor, a_sum: float, b_sum: float) -> float:
        return _hsic_terms(total, float(w @ products), a_sum, b_sum, float((w * a * b).sum()))

    xx, yy = hsic(kk, kw, kw, k_sum, k_sum), hsic(ll, lw, lw, l_sum, l_sum)
    if xx <= 0 or yy <= 0:  # a resample too small for the unbiased HSIC: no value, not a 0 (dropped by the bootstrap)
        return math.nan
    return hsic(kl, kw, lw, k_sum, l_sum) / math.sqrt(xx * yy)


def cka_matrix(representations: dict[str, torch.Tensor]) -> tuple[list[str], list[list[float]]]:
    """Names and the symmetric matrix of (debiased) CKA between every pair of representations."""
    names = list(representations)
    matrix = [[1.0] * len(names) for _ in names]
    for i, a in enumerate(names):
        for j in range(i + 1, len(names)):
            matrix[i][j] = matrix[j][i] = linear_cka(representations[a], representations[names[j]])
    return names, matrix


def gram(activations: torch.Tensor) -> torch.Tensor:
    """``X_c X_c^T`` of ``activations`` (samples, units) with centred columns, float64: what CKA's bootstrap
    resamples."""
    x = activations.double().flatten(1)
    x = x - x.mean(0, keepdim=True)
    return x @ x.T


def bootstrap_resamples(samples: int) -> int:
    """Resamples of :func:`cka_interval` for ``samples`` samples: 200 up to 1,024 samples, fewer above (each costs
    a pass over five samples x samples matrices), never under 50."""
    return max(50, min(200, int(200 * 1024 / max(samples, 1))))


def cka_interval(k: torch.Tensor, l: torch.Tensor, seed: int = 0) -> Interval | None:  # noqa: E741 - the papers' names
    """Basic bootstrap interval over the samples of the debiased linear CKA of two representations given by their Gram
    matrices (samples, samples; :func:`gram`; centred here if they are not): an interval of the population CKA, clipped
    to [0, 1]. A resample weighs each sample by the times it was drawn (``w``) and leaves out the pairs of copies of one
    sample, as the unbiased HSIC leaves out the diagonal: ``sum K~ * L~`` becomes ``w'(K~*L~)w``, ``1'K~1`` becomes
    ``w'K~w`` and ``1'K~L~1`` becomes ``sum_i w_i (K~w)_i (L~w)_i`` (``K~``: ``K`` with a zero diagonal), with ``n = sum
    w``: five matrix-vector products per resample, equal to the debiased CKA of the resampled samples with the copies'
    pairs masked. Counting the copies' pairs instead would bias a resample upward (by about what the biased estimator's
    diagonal does), so the resamples centre near the estimate and the basic interval (``2 x CKA - quantiles``) differs
    little from the percentile one; the basic one is kept for what bias remains. Measured coverage: see
    ``tests/test_decomposition_intervals.py``. Below :data:`MIN_DEBIASED_SAMPLES`: None."""
    n = len(k)
    if n < MIN_DEBIASED_SAMPLES:
        return None
    # Double-centred first: the copies-masked resample is not invariant to the Gram's centring, as the U-statistic is
    k, l = _zero_diagonal(_double_centred(k.double())), _zero_diagonal(_double_centred(l.double()))  # noqa: E741
    stacked = torch.cat([k * l, k * k, l * l, k, l])

    def statistic(index: np.ndarray) -> float:
        w = torch.from_numpy(np.bincount(index, minlength=n)).double()
        return _weighted_cka(k, l, w, stacked)

    estimate = statistic(np.arange(n))
    if not math.isfinite(estimate):
        return None
    return bootstrap_basic(statistic, n, estimate, resamples=bootstrap_resamples(n), seed=seed, bounds=(0.0, 1.0))
