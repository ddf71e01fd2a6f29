"""Layer maps: 2-D embeddings of a layer's per-sample activation vectors, coloured by class.

The activations ``(samples, units)`` are projected on their first two principal components (Pearson 1901) and,
for at least 10 points, embedded with t-SNE (van der Maaten & Hinton 2008, initialised with PCA); how well the
classes separate in the PCA map is scored by the silhouette coefficient (Rousseeuw 1987): near 1 for tight,
well-apart clusters, near 0 when the labels do not follow the layer's geometry. As in the activation atlases of
Carter et al. 2019 ("Activation Atlas", Distill), the map shows which inputs a layer treats as alike.
"""

from __future__ import annotations

import numpy as np
import torch

MIN_TSNE_POINTS = 10


def layer_map(activations: torch.Tensor, labels: torch.Tensor | None, class_names: list[str] | None = None,
              max_points: int = 500, seed: int = 0, tsne: bool = True) -> dict:
    """PCA (and t-SNE) coordinates of at most ``max_points`` samples (seeded subsample, in index order).

    Returns ``{"pca", "pca_explained", "tsne", "labels", "samples", "separation"}``; ``tsne`` is ``None`` when
    skipped, ``separation`` (silhouette of the labels in the PCA map) is ``None`` without two or more classes.
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    data = torch.nan_to_num(activations.detach().double().cpu().reshape(activations.shape[0], -1))
    samples = _subsample(data.shape[0], max_points, seed)
    points = data[samples].numpy()
    names = _names(labels, samples, class_names)
    n, units = points.shape
    pca, explained = np.zeros((n, 2)), [0.0, 0.0]
    if n >= 2 and units >= 1:
        components = min(2, n, units)
        model = PCA(n_components=components, random_state=seed)
        pca[:, :components] = model.fit_transform(points)
        explained[:components] = np.nan_to_num(model.explained_variance_ratio_).tolist()
    embedded = None
    if tsne and n >= MIN_TSNE_POINTS:
        init = "pca" if units >= 2 else "random"
        embedded = TSNE(n_components=2, perplexity=min(30.0, (n - 1) / 3), init=init,
                        random_state=seed).fit_transform(points)
    return {"pca": _rounded(pca), "pca_explained": [round(float(r), 4) for r in explained],
            "tsne": None if embedded is None else _rounded(embedded), "labels": names,
            "samples": [int(i) for i in samples], "separation": _separation(pca, names)}


def _subsample(total: int, max_points: int, seed: int) -> list[int]:
    """All indices, or ``max_points`` of them drawn with a seeded generator, sorted."""
    if total <= max_points:
        return list(range(total))
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(total, generator=generator)[:max(0, max_points)].tolist())


def _names(labels: torch.Tensor | None, samples: list[int], class_names: list[str] | None) -> list[str] | None:
    if labels is None:
        return None
    values = labels.detach().cpu().reshape(-1).long().tolist()
    return [str(class_names[values[i]]) if class_names and 0 <= values[i] < len(class_names) else str(values[i])
            for i in samples]


def _separation(points: np.ndarray, names: list[str] | None) -> float | None:
    """Silhouette score of the labels in ``points``; ``None`` unless 2 <= classes <= samples - 1."""
    from sklearn.metrics import silhouette_score

    if names is None or not 2 <= len(set(names)) <= len(names) - 1:
        return None
    if not np.ptp(points, axis=0).any():
        return 0.0
    return round(float(silhouette_score(points, names)), 4)


def _rounded(points: np.ndarray) -> list[list[float]]:
    return [[round(float(x), 4) + 0.0, round(float(y), 4) + 0.0] for x, y in np.nan_to_num(points)]  # no -0.0
