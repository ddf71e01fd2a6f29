"""Linear probes: is a concept or an attribute linearly decodable from a layer's activations? (Alain and Bengio
2016; Belinkov 2022)

A scikit-learn logistic regression on standardised per-sample activations, cross-validated (stratified folds) and
scored by balanced accuracy, so that a majority class earns nothing. The score is corrected for chance with the
same probe trained on shuffled labels (the spirit of Hewitt and Liang's 2019 control tasks: what a probe of this
capacity reaches on this many samples when there is nothing to find): ``decodability = (score - shuffled) / (1 -
shuffled)``, 0 at chance, 1 when the attribute is decoded perfectly. The chance level is the mean over several
shuffles (each a seeded permutation with its own fold split); the probe itself is cross-fitted on several seeded
fold splits (every sample predicted by a probe that did not train on it), and the score is the balanced accuracy
of those held-out predictions. The interval (:meth:`ProbeResult.interval`) bootstraps the samples.
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
    #: Class codes (samples,), and the held-out prediction of every sample on every seeded split (seeds, samples).
    labels: np.ndarray | None = None
    predictions: np.ndarray | None = None
    #: The shuffled labels (shuffles, samples) and the held-out predictions of the probes trained on them.
    shuffled_labels: np.ndarray | None = None
    shuffled_predictions: np.ndarray | None = None

    @property
    def decodability(self) -> float:
        """Chance-corrected balanced accuracy, clipped below at 0."""
        return corrected(self.balanced_accuracy, self.shuffled_balanced_accuracy)

    @property
    def seeds(self) -> int:
        return 1 if self.predictions is None else len(self.predictions)

    @property
    def shuffled_scores(self) -> np.ndarray | None:
        """The balanced accuracy of each shuffle's held-out predictions against its shuffled labels."""
        if self.shuffled_predictions is None or self.shuffled_labels is None:
            return None
        return np.array([balanced_accuracy(labels, predictions == labels)
                         for labels, predictions in zip(self.shuffled_labels, self.shuffled_predictions)])

    @property
    def chance_spread(self) -> float:
        """Standard deviation of the shuffled-label score over the shuffles (0 with one shuffle)."""
        scores = self.shuffled_scores
        return float(np.std(scores, ddof=1)) if scores is not None and len(scores) > 1 else 0.0

    def interval(self, seed: int = 0) -> Interval | None:
        """Percentile bootstrap of :attr:`decodability` over the samples, without refitting: each resample of the
        samples rescores the held-out predictions already made (every seeded split's; and the shuffles', each
        against its own labels, the shuffles themselves drawn with replacement so that the chance level's spread
        over permutations counts too). A sample is the unit that is independent: the per-fold scores of repeated
        cross-validation, which the former interval resampled, share their training samples, and that interval was
        about a third as wide as the spread of the decodability over independent audit sets (rule docs of L205)."""
        if not self.resamplable:
            return None
        draws = np.random.default_rng(seed + 1)
        shuffles = len(self.shuffled_labels)
        return bootstrap(lambda idx: self.resampled(idx, draws.integers(0, shuffles, shuffles)), self.samples,
                         seed=seed, over=f"samples (held-out predictions of {self.seeds} seeded splits x "
                                         f"{self.folds} folds; {shuffles} shuffles drawn with replacement; "
                                         f"no refit: {COVERAGE_NOTE})")

    @property
    def resamplable(self) -> bool:
        return self.predictions is not None and self.labels is not None and self.shuffled_predictions is not None

    def resampled(self, idx: np.ndarray, picked: np.ndarray) -> float:
        """:attr:`decodability` rescored on the samples ``idx`` with the shuffles ``picked`` (no refit)."""
        score = np.mean([balanced_accuracy(self.labels[idx], (row == self.labels)[idx]) for row in self.predictions])
        chance = np.mean([balanced_accuracy(self.shuffled_labels[i][idx],
                                            (self.shuffled_predictions[i] == self.shuffled_labels[i])[idx])
                          for i in picked])
        return corrected(float(score), float(chance))


#: What the no-refit interval's nominal 95% holds in measurement (``benchmarks/bias_calibration.py --intervals``).
COVERAGE_NOTE = "nominal 95%, measured to hold the mean over independent audit sets in 80% to 87% of them"


def paired_difference(first: ProbeResult, second: ProbeResult, seed: int = 0) -> Interval | None:
    """Percentile bootstrap of ``first.decodability - second.decodability`` for two probes of the same labels on the
    same samples (two layers): each resample draws the same samples (and shuffle indices) for both, so the noise the
    two share cancels and what is left is the noise of their difference."""
    if not (first.resamplable and second.resamplable) or first.samples != second.samples:
        return None
    draws = np.random.default_rng(seed + 1)
    shuffles = min(len(first.shuffled_labels), len(second.shuffled_labels))

    def statistic(idx: np.ndarray) -> float:
        picked = draws.integers(0, shuffles, shuffles)
        return first.resampled(idx, picked) - second.resampled(idx, picked)

    return bootstrap(statistic, first.samples, seed=seed, over="samples, paired (the same resample for both layers)")


def balanced_accuracy(labels: np.ndarray, hits: np.ndarray) -> float:
    """Mean over the classes present in ``labels`` of the share of their samples predicted right (``hits``)."""
    counts = np.bincount(labels)
    right = np.bincount(labels, weights=hits.astype(float), minlength=len(counts))
    present = counts > 0
    return float((right[present] / counts[present]).mean())


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
    """Cross-fitted, chance-corrected linear probe of ``labels`` (class codes) from ``features``: every sample is
    predicted by a probe that did not train on it (``folds`` stratified folds), on ``seeds`` seeded fold splits;
    the score is the balanced accuracy of those held-out predictions, averaged over the splits; the chance level is
    the same score on ``shuffles`` seeded permutations of the labels (each on a fold split of its own)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labels = np.asarray(labels)
    _, labels = np.unique(labels, return_inverse=True)
    counts = np.bincount(labels)
    if len(counts) < 2:
        raise ValueError("the attribute takes a single value on the audit samples: nothing to decode")
    folds = min(folds, int(counts.min()))
    if folds < 2:
        raise ValueError("a value of the attribute occurs on a single audit sample: cannot cross-validate")
    model = make_pipeline(StandardScaler(), LogisticRegression(C=regularization, max_iter=500, class_weight="balanced"))
    rng = np.random.default_rng(seed)

    def held_out(target: np.ndarray, split: int) -> np.ndarray:
        splitter = StratifiedKFold(folds, shuffle=True, random_state=seed + split)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence warnings on separable data; the score stands
            return cross_val_predict(model, features, target, cv=splitter)

    shuffled_labels = np.stack([rng.permutation(labels) for _ in range(max(shuffles, 1))])
    shuffled = np.stack([held_out(target, index) for index, target in enumerate(shuffled_labels)])
    predictions = np.stack([held_out(labels, index) for index in range(max(seeds, 1))])
    score = float(np.mean([balanced_accuracy(labels, row == labels) for row in predictions]))
    chance = float(np.mean([balanced_accuracy(own, row == own) for own, row in zip(shuffled_labels, shuffled)]))
    return ProbeResult(score, chance, len(counts), len(labels), folds, labels, predictions, shuffled_labels,
                       shuffled)
