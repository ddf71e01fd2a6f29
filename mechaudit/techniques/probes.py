"""Linear probes: is a concept or an attribute linearly decodable from a layer's activations? (Alain and Bengio
2016; Belinkov 2022)

A scikit-learn logistic regression on standardised per-sample activations, cross-validated (stratified folds) and
scored by balanced accuracy, so that a majority class earns nothing. The score is corrected for chance with the
same probe trained on shuffled labels (the spirit of Hewitt and Liang's 2019 control tasks: what a probe of this
capacity reaches on this many samples when there is nothing to find): ``decodability = (score - shuffled) / (1 -
shuffled)``, 0 at chance, 1 when the attribute is decoded perfectly. The chance level is the mean over several
shuffles (each a seeded permutation with its own fold split); the probe itself is cross-validated over several
seeded fold splits, whose per-fold scores give the decodability's interval (:meth:`ProbeResult.interval`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from .uncertainty import Interval, bootstrap

#: Features beyond this many are reduced to their first principal components before probing (keeps probes fast
#: on wide layers and on large output vocabularies).
MAX_FEATURES = 256


@dataclass
class ProbeResult:
    balanced_accuracy: float
    shuffled_balanced_accuracy: float
    classes: int
    samples: int
    folds: int
    #: Balanced accuracy of every fold of every seeded split (seeds x folds), and of every shuffle (mean over folds).
    fold_scores: np.ndarray | None = None
    shuffled_scores: np.ndarray | None = None

    @property
    def decodability(self) -> float:
        """Chance-corrected balanced accuracy, clipped below at 0."""
        return corrected(self.balanced_accuracy, self.shuffled_balanced_accuracy)

    @property
    def seeds(self) -> int:
        return 1 if self.fold_scores is None else len(self.fold_scores) // self.folds

    @property
    def chance_spread(self) -> float:
        """Standard deviation of the shuffled-label score over the shuffles (0 with one shuffle)."""
        scores = self.shuffled_scores
        return float(np.std(scores, ddof=1)) if scores is not None and len(scores) > 1 else 0.0

    def interval(self, seed: int = 0) -> Interval | None:
        """Percentile bootstrap of :attr:`decodability` over the per-fold scores of every seeded split, the chance
        level held at its mean over the shuffles."""
        scores = self.fold_scores
        if scores is None:
            return None
        chance = self.shuffled_balanced_accuracy
        return bootstrap(lambda idx: corrected(float(scores[idx].mean()), chance), len(scores),
                         over=f"probe folds ({self.seeds} seeded splits x {self.folds} folds)", seed=seed)


def corrected(score: float, chance: float) -> float:
    """``(score - chance) / (1 - chance)``, clipped below at 0: 0 at the shuffled-label chance level, 1 perfect."""
    return max(0.0, (score - chance) / max(1.0 - chance, 1e-12))


def as_classes(values: torch.Tensor, max_levels: int = 10, bins: int = 4) -> np.ndarray:
    """Integer class codes: the distinct values when there are at most ``max_levels``, else ``bins`` quantile bins
    (a continuous attribute such as age)."""
    values = values.double().cpu()
    levels = values.unique()
    if len(levels) <= max_levels:
        return np.searchsorted(levels.numpy(), values.numpy())
    edges = values.quantile(torch.linspace(0, 1, bins + 1)[1:-1].double()).numpy()
    return np.searchsorted(edges, values.numpy(), side="right")


def reduce_features(features: torch.Tensor, limit: int = MAX_FEATURES) -> np.ndarray:
    """(samples, features) as float64 numpy, reduced to its first principal components when wider than ``limit``
    or than a quarter of the samples (a probe with more features than that separates anything: it would measure
    the sample size, not the attribute)."""
    features = features.double().cpu()
    limit = min(limit, max(2, features.shape[0] // 4))
    if features.shape[1] > limit:
        centred = features - features.mean(0)
        _, _, basis = torch.linalg.svd(centred, full_matrices=False)
        features = centred @ basis[:limit].T
    return features.numpy()


def probe(features: np.ndarray, labels: np.ndarray, folds: int = 5, shuffles: int = 2, seed: int = 0,
          regularization: float = 1.0, seeds: int = 1) -> ProbeResult:
    """Cross-validated, chance-corrected linear probe of ``labels`` (class codes) from ``features``: the probe is
    cross-validated on ``seeds`` seeded fold splits, the chance level is its mean score on ``shuffles`` seeded
    permutations of the labels (each on a fold split of its own)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    _, counts = np.unique(labels, return_counts=True)
    if len(counts) < 2:
        raise ValueError("the attribute takes a single value on the audit samples: nothing to decode")
    folds = min(folds, int(counts.min()))
    if folds < 2:
        raise ValueError("a value of the attribute occurs on a single audit sample: cannot cross-validate")
    model = make_pipeline(StandardScaler(), LogisticRegression(C=regularization, max_iter=500))
    rng = np.random.default_rng(seed)

    def scores(target: np.ndarray, split: int) -> np.ndarray:
        splitter = StratifiedKFold(folds, shuffle=True, random_state=seed + split)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence warnings on separable data; the score stands
            return cross_val_score(model, features, target, cv=splitter, scoring="balanced_accuracy")

    shuffled = np.array([scores(rng.permutation(labels), index).mean() for index in range(max(shuffles, 1))])
    real = np.concatenate([scores(labels, index) for index in range(max(seeds, 1))])
    return ProbeResult(float(real.mean()), float(shuffled.mean()), len(counts), len(labels), folds, real, shuffled)
