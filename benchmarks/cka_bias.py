"""Biased against debiased linear CKA on seeded data with a known answer.

    python benchmarks/cka_bias.py [--seeds 3] [--samples 64,256,1024] [--widths 16,256,1024,3072]

Printed: the mean (and spread over seeds) of CKA between two *independent* Gaussian representations, whose
population CKA is 0, at each number of samples and width, by the biased estimator (Kornblith et al. 2019) and the
debiased one (unbiased HSIC, Song et al. 2012); then identical and rotated-and-scaled pairs (both 1 by either), and
the coverage of :func:`~mechaudit.techniques.cka.cka_interval` of a related pair of known population CKA.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from mechaudit.techniques.cka import cka_interval, gram, linear_cka


def independent(samples: int, width: int, seeds: int) -> tuple[list[float], list[float]]:
    biased, debiased = [], []
    for seed in range(seeds):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(samples, width, generator=g, dtype=torch.float64)
        y = torch.randn(samples, width, generator=g, dtype=torch.float64)
        biased.append(linear_cka(x, y, debiased=False))
        debiased.append(linear_cka(x, y))
    return biased, debiased


def coverage(datasets: int, samples: int = 128, d: int = 20) -> tuple[float, float, float]:
    """``y = x A + noise`` (population CKA ``||A||^2 / (sqrt(d) ||A'A + I||)``): the share of intervals that hold
    it, the population value and the mean debiased estimate."""
    rng = np.random.default_rng(1)
    a = rng.normal(size=(d, d)) * 0.3
    population = float((a ** 2).sum() / (np.sqrt(d) * np.linalg.norm(a.T @ a + np.eye(d))))
    covered, estimates = 0, []
    for seed in range(datasets):
        x = torch.from_numpy(rng.normal(size=(samples, d)))
        y = x @ torch.from_numpy(a) + torch.from_numpy(rng.normal(size=(samples, d)))
        interval = cka_interval(gram(x), gram(y), seed=seed)
        covered += interval.low <= population <= interval.high
        estimates.append(linear_cka(x, y))
    return covered / datasets, population, float(np.mean(estimates))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--samples", default="64,256,1024")
    parser.add_argument("--widths", default="16,256,1024,3072")
    parser.add_argument("--datasets", type=int, default=100, help="coverage: datasets drawn")
    args = parser.parse_args()
    print("independent representations (population CKA 0): mean +- sd over seeds")
    print(f"{'samples':>8} {'width':>6} {'biased':>16} {'debiased':>16}")
    for n in map(int, args.samples.split(",")):
        for width in map(int, args.widths.split(",")):
            biased, debiased = independent(n, width, args.seeds)
            print(f"{n:>8} {width:>6} {np.mean(biased):>9.4f} +- {np.std(biased):.3f} "
                  f"{np.mean(debiased):>8.4f} +- {np.std(debiased):.3f}")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1024, generator=g, dtype=torch.float64)
    rotation = torch.linalg.qr(torch.randn(1024, 1024, generator=g, dtype=torch.float64))[0]
    for name, y in (("identical", x), ("rotated and scaled", 3 * x @ rotation)):
        print(f"{name} (64 samples, 1024 wide): biased {linear_cka(x, y, debiased=False):.6f}, "
              f"debiased {linear_cka(x, y):.6f}")
    share, population, mean = coverage(args.datasets)
    print(f"interval coverage of the population CKA {population:.3f} (128 samples, 20 wide, {args.datasets} datasets; "
          f"mean debiased estimate {mean:.3f}): {share:.2f}")


if __name__ == "__main__":
    main()
