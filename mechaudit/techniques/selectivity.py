"""Selectivity of units or dictionary features for classes or concepts: how spread their strongest activations are.

For each component (a column of a per-sample activation matrix), its *top-activating samples* are the ``top``
samples on which it is most active, among those where it is active at all (> 0: its output passes a ReLU; a
dictionary feature is non-negative). The labels of those samples, re-weighted by the inverse of each label's
frequency (so that a frequent class is not mistaken for a preference), give a distribution over labels:

* ``purity``: the share of the most frequent label, 1 for a component whose strongest activations all come from
  one class, about 1 / classes for one that does not care;
* ``entropy``: the normalised entropy of the distribution (0: one label, 1: uniform), which we use to call a
  component polysemantic (its strongest activations spread over several classes; Olah et al. 2020, Elhage et al.
  2022 call such neurons polysemantic).

A component active on fewer than ``min_active`` samples is not scored (NaN): there is nothing to read.

Example::

    scores = label_selectivity(activations, labels, top=20)     # activations (samples, units)
    scores.purity[3], scores.top_label[3]                       # unit 3: 0.95, class 7
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class Selectivity:
    """Per component: purity, entropy, most frequent label among its top samples, and those samples."""

    purity: torch.Tensor        #: (components,) share of the most frequent (re-weighted) label; NaN if not scored
    entropy: torch.Tensor       #: (components,) normalised entropy of the label distribution; NaN if not scored
    top_label: torch.Tensor     #: (components,) index of the most frequent label (-1 if not scored)
    top_samples: torch.Tensor   #: (components, top) sample indices, most active first (-1 where fewer are active)
    distribution: torch.Tensor  #: (components, labels) the re-weighted label distribution

    @property
    def scored(self) -> torch.Tensor:
        return ~torch.isnan(self.purity)

    @property
    def effective_labels(self) -> torch.Tensor:
        """(components,) perplexity of the label distribution: the effective number of labels (1 for one label,
        k for k equally frequent ones)."""
        logs = torch.where(self.distribution > 0, self.distribution.log(), torch.zeros_like(self.distribution))
        return torch.exp(-(self.distribution * logs).sum(-1))

    def mean_purity(self) -> float:
        """Mean purity over the scored components (NaN when none is)."""
        return float(self.purity[self.scored].mean()) if self.scored.any() else math.nan


def top_active(activations: torch.Tensor, top: int, min_active: int = 1) -> torch.Tensor:
    """(components, top) indices of each column's largest activations among its positive ones, -1 padded."""
    values, indices = activations.topk(min(top, activations.shape[0]), dim=0)
    indices = torch.where(values > 0, indices, torch.full_like(indices, -1)).T
    if indices.shape[1] < top:
        indices = torch.cat([indices, torch.full((indices.shape[0], top - indices.shape[1]), -1)], 1)
    enough = (indices >= 0).sum(1) >= min_active
    return torch.where(enough.unsqueeze(1), indices, torch.full_like(indices, -1))


def label_selectivity(activations: torch.Tensor, labels: torch.Tensor, top: int = 20,
                      min_active: int = 5) -> Selectivity:
    """Selectivity of each column of ``activations`` (samples, components) for integer ``labels`` (samples,)."""
    labels = labels.long().cpu()
    activations = activations.float().cpu()
    classes = int(labels.max()) + 1 if labels.numel() else 1
    frequency = torch.bincount(labels, minlength=classes).double()
    weight = torch.where(frequency > 0, frequency.sum() / frequency.clamp_min(1), torch.zeros_like(frequency))
    tops = top_active(activations, top, min_active)
    distribution = torch.zeros(activations.shape[1], classes, dtype=torch.float64)
    valid = tops >= 0
    rows = torch.arange(tops.shape[0]).unsqueeze(1).expand_as(tops)
    distribution.index_put_((rows[valid], labels[tops[valid]]), weight[labels[tops[valid]]], accumulate=True)
    scored = valid.sum(1) >= min_active
    distribution = distribution / distribution.sum(1, keepdim=True).clamp_min(1e-12)
    purity, top_label = distribution.max(1)
    logs = torch.where(distribution > 0, distribution.log(), torch.zeros_like(distribution))
    observed = int((frequency > 0).sum())
    entropy = -(distribution * logs).sum(1) / math.log(max(observed, 2))
    nan = torch.full_like(purity, math.nan)
    return Selectivity(torch.where(scored, purity, nan).float(), torch.where(scored, entropy, nan).float(),
                       torch.where(scored, top_label, torch.full_like(top_label, -1)), tops,
                       distribution.float())


@dataclass(frozen=True)
class LabelInformation:
    """How much a layer's units know about the labels: ``value = 1 - mean log(effective labels) / mean
    log(effective labels with shuffled labels)`` over the scored units, 0 at chance (units whose strongest
    activations come from any label), 1 when each unit's come from one label; with the shuffled draws' values."""

    value: float
    chance: tuple[float, ...]   #: the same statistic for each shuffled draw (around 0)

    @property
    def chance_high(self) -> float:
        return max(self.chance) if self.chance else 0.0


def label_information(activations: torch.Tensor, labels: torch.Tensor, top: int, min_active: int,
                      draws: int = 20, seed: int = 0) -> LabelInformation:
    """:class:`LabelInformation` of the columns of ``activations`` (samples, components) for ``labels``, against
    ``draws`` seeded permutations of the labels (the same top samples, labels shuffled)."""
    def mean_log(labelled: torch.Tensor) -> float:
        scores = label_selectivity(activations, labelled, top, min_active)
        effective = scores.effective_labels[scores.scored]
        return float(effective.clamp_min(1.0).log().mean()) if len(effective) else math.nan

    generator = torch.Generator().manual_seed(seed)
    nulls = [mean_log(labels[torch.randperm(len(labels), generator=generator)]) for _ in range(draws)]
    null = sum(nulls) / len(nulls) if nulls else math.nan
    if not null > 0:
        return LabelInformation(0.0, ())
    return LabelInformation(1.0 - mean_log(labels) / null, tuple(1.0 - n / null for n in nulls))
