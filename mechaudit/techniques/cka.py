"""Linear centered kernel alignment (CKA; Kornblith, Norouzi, Lee, Hinton 2019) between two representations of
the same samples: 1 when one is an orthogonal transform and isotropic scaling of the other, near 0 for unrelated
ones; invariant to the number of units, so any two layers compare."""

from __future__ import annotations

import torch


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """CKA of ``x`` (samples, a) and ``y`` (samples, b), in float64, by the feature-space formula
    ``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` on centred columns; 0 when either is constant."""
    x = x.double() - x.double().mean(0, keepdim=True)
    y = y.double() - y.double().mean(0, keepdim=True)
    cross = torch.linalg.matrix_norm(y.T @ x) ** 2
    norms = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    return float(cross / norms) if float(norms) > 0 else 0.0


def cka_matrix(representations: dict[str, torch.Tensor]) -> tuple[list[str], list[list[float]]]:
    """Names and the symmetric matrix of CKA between every pair of representations."""
    names = list(representations)
    matrix = [[1.0] * len(names) for _ in names]
    for i, a in enumerate(names):
        for j in range(i + 1, len(names)):
            matrix[i][j] = matrix[j][i] = linear_cka(representations[a], representations[names[j]])
    return names, matrix
