"""The dimensionality of a representation: its PCA spectrum, the components needed for a share of the variance,
and the effective rank (Roy and Vetterli 2007: the exponential of the entropy of the normalised spectrum, between
1 for a representation on one line and the number of dimensions for an isotropic one)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class Spectrum:
    """The variance along each principal component of a (samples, units) matrix, largest first."""

    variances: torch.Tensor
    live_units: int  #: units whose activation varies at all

    @property
    def explained(self) -> torch.Tensor:
        """Share of the variance along each component."""
        total = float(self.variances.sum())
        return self.variances / total if total > 0 else torch.zeros_like(self.variances)

    def components_for(self, share: float) -> int:
        """The fewest components that explain at least ``share`` of the variance (0 for a constant matrix)."""
        if float(self.variances.sum()) <= 0:
            return 0
        cumulative = self.explained.double().cumsum(0)
        return int((cumulative < share - 1e-9).sum()) + 1

    @property
    def effective_rank(self) -> float:
        p = self.explained.double()
        p = p[p > 0]
        return float(math.exp(-(p * p.log()).sum())) if p.numel() else 0.0


def spectrum(activations: torch.Tensor, tolerance: float = 1e-10) -> Spectrum:
    """PCA spectrum of ``activations`` (samples, units), in float64."""
    x = activations.double()
    x = x - x.mean(0, keepdim=True)
    live = int((x.abs().amax(0) > tolerance).sum())
    if x.shape[0] < 2:
        return Spectrum(torch.zeros(min(x.shape)), live)
    singular = torch.linalg.svdvals(x)
    variances = singular ** 2 / (x.shape[0] - 1)
    variances = torch.where(variances > tolerance * max(float(variances.max()), 1.0), variances,
                            torch.zeros_like(variances))
    return Spectrum(variances.float(), live)


def spectrum_of_covariance(covariance: torch.Tensor, tolerance: float = 1e-10) -> Spectrum:
    """The PCA spectrum from a (units, units) covariance matrix (e.g. accumulated over a stream of vectors): its
    eigenvalues, largest first; a unit is live when its variance exceeds ``tolerance`` of the largest."""
    covariance = covariance.double()
    variances = torch.linalg.eigvalsh((covariance + covariance.T) / 2).flip(0).clamp_min(0)
    diagonal = covariance.diagonal()
    live = int((diagonal > tolerance * max(float(diagonal.max()), 1e-30)).sum()) if diagonal.numel() else 0
    variances = torch.where(variances > tolerance * max(float(variances.max()), 1e-30), variances,
                            torch.zeros_like(variances))
    return Spectrum(variances.float(), live)
