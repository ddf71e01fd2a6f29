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
    """PCA spectrum of ``activations`` (samples, units), in float64; live units and kept components as in
    :func:`spectrum_of_covariance` (relative to the largest, so the same at any scale)."""
    x = activations.double()
    x = x - x.mean(0, keepdim=True)
    if x.shape[0] < 2:
        return Spectrum(torch.zeros(min(x.shape)), 0)
    live = _live_units((x * x).sum(0) / (x.shape[0] - 1), tolerance)
    variances = torch.linalg.svdvals(x) ** 2 / (x.shape[0] - 1)
    return Spectrum(_kept(variances, tolerance).float(), live)


def spectrum_of_covariance(covariance: torch.Tensor, tolerance: float = 1e-10) -> Spectrum:
    """The PCA spectrum from a (units, units) covariance matrix (e.g. accumulated over a stream of vectors): its
    eigenvalues, largest first."""
    covariance = covariance.double()
    variances = torch.linalg.eigvalsh((covariance + covariance.T) / 2).flip(0).clamp_min(0)
    return Spectrum(_kept(variances, tolerance).float(), _live_units(covariance.diagonal(), tolerance))


def _live_units(variances: torch.Tensor, tolerance: float) -> int:
    """Units whose variance exceeds ``tolerance`` of the largest unit's: *live* means this in both spectra."""
    return int((variances > tolerance * max(float(variances.max()), 1e-30)).sum()) if variances.numel() else 0


def _kept(variances: torch.Tensor, tolerance: float) -> torch.Tensor:
    """``variances`` with those below ``tolerance`` of the largest set to zero (numerical noise)."""
    if not variances.numel():
        return variances
    return torch.where(variances > tolerance * max(float(variances.max()), 1e-30), variances,
                       torch.zeros_like(variances))
