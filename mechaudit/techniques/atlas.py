"""Activation atlas: a layer's activations laid out in two dimensions, each cell of a grid shown by its mean input.

Carter et al. 2019 ("Activation Atlas", Distill) lay activation vectors out with UMAP, cut the layout into a grid
and draw, in each cell, a feature visualisation of the cell's mean activation. For an audit the natural inputs are
at hand, so each cell shows the mean of the inputs whose activations fall in it (the "average input" view), with
the cell's dominant label and, optionally, the share of its samples that carry a mark (e.g. a watermark).

The layout is scikit-learn's t-SNE (PCA-initialised, seeded; PCA alone above :data:`TSNE_SAMPLES`), so the atlas
needs no dependency beyond scikit-learn.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

TSNE_SAMPLES = 2000  # above this many samples, PCA alone (t-SNE costs O(n log n) per step, too slow on a CPU)
MAX_DIMENSIONS = 4096  # a layer wider than this (units x positions) is averaged over positions first


def activation_atlas(activations: torch.Tensor, inputs: torch.Tensor, labels: list[str] | None = None,
                     marked: torch.Tensor | None = None, grid: int = 8, min_count: int = 2, tile: int = 16,
                     seed: int = 0) -> dict:
    """The atlas of ``activations`` ``(samples, units, positions)`` for image ``inputs`` ``(samples, C, H, W)``.

    Returns ``{"method", "grid", "samples", "cells"}``; each cell holds ``row``, ``col``, ``count``, ``image`` (the
    mean input over channels, pooled to at most ``tile`` a side, 3 decimals, on the scale of the whole atlas),
    the dominant ``label`` and its ``label_share`` (with ``labels``), and ``marked_share`` (with ``marked``).
    Cells with fewer than ``min_count`` samples are left out.
    """
    if inputs.dim() != 4 or activations.shape[0] != inputs.shape[0]:
        raise ValueError("an atlas needs image inputs (samples, C, H, W) and one activation row per sample")
    vectors = activations.flatten(1) if activations[0].numel() <= MAX_DIMENSIONS else activations.mean(-1)
    points, method = _layout(vectors.double().numpy(), seed)
    low, high = points.min(0), points.max(0)
    cells = np.minimum(((points - low) / np.where(high > low, high - low, 1) * grid).astype(int), grid - 1)
    images = F.adaptive_avg_pool2d(inputs.float().mean(1, keepdim=True).cpu(),
                                   (min(tile, inputs.shape[-2]), min(tile, inputs.shape[-1])))[:, 0]
    floor, ceiling = float(images.min()), float(images.max())
    scale = ceiling - floor if ceiling > floor else 1.0
    rows = []
    for row in range(grid):
        for col in range(grid):
            members = np.flatnonzero((cells[:, 1] == grid - 1 - row) & (cells[:, 0] == col))  # row 0 at the top
            if len(members) < min_count:
                continue
            mean = (images[members].mean(0) - floor) / scale
            cell = {"row": row, "col": col, "count": int(len(members)),
                    "image": [[round(float(v), 3) for v in line] for line in mean]}
            if labels is not None:
                names, counts = np.unique([labels[i] for i in members], return_counts=True)
                cell.update(label=str(names[counts.argmax()]), label_share=round(float(counts.max() / len(members)), 3))
            if marked is not None:
                cell["marked_share"] = round(float(marked[torch.from_numpy(members)].float().mean()), 3)
            rows.append(cell)
    return {"method": method, "grid": grid, "samples": int(len(points)), "cells": rows}


def _layout(vectors: np.ndarray, seed: int) -> tuple[np.ndarray, str]:
    """2-D coordinates of the standardised vectors: t-SNE (PCA-initialised) or, for many samples, PCA."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    spread = vectors.std(0)
    vectors = (vectors - vectors.mean(0)) / np.where(spread > 0, spread, 1)
    if len(vectors) < 4:
        return np.zeros((len(vectors), 2)), "none (fewer than 4 samples)"
    if len(vectors) > TSNE_SAMPLES:
        return PCA(2, random_state=seed).fit_transform(vectors), "PCA"
    perplexity = min(30.0, (len(vectors) - 1) / 3)
    layout = TSNE(2, perplexity=perplexity, init="pca", random_state=seed, max_iter=300).fit_transform(vectors)
    return layout, "t-SNE"
