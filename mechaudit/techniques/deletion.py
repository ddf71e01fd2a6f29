"""Faithfulness of an attribution: deletion and insertion curves (Petsiuk et al. 2018) and infidelity (Yeh et al.
2019).

Deletion removes input elements in the order of a ranking (highest first), setting them to the baseline, and
follows the probability of the target class; insertion starts from the baseline and puts elements back in the
same order. A faithful attribution makes the deletion curve fall and the insertion curve rise faster than a
random order does; the areas under the curves (fractions of elements on [0, 1]) summarise them, measured above the
baseline's probability (where deletion ends and insertion starts), so that a floor the probability cannot fall
below (about 0.5 for two classes) does not compress the comparison.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..activations import batches


@dataclass
class Curves:
    """Per-sample probability of the target class after removing (``deletion``) or restoring (``insertion``)
    each fraction in ``fractions`` of the input elements: shape (samples, len(fractions))."""

    fractions: torch.Tensor
    deletion: torch.Tensor
    insertion: torch.Tensor

    @property
    def deletion_auc(self) -> float:
        return float(torch.trapezoid(self.deletion, self.fractions, dim=1).mean())

    @property
    def insertion_auc(self) -> float:
        return float(torch.trapezoid(self.insertion, self.fractions, dim=1).mean())

    @property
    def deletion_excess(self) -> float:
        """Area of the mean deletion curve above its end (everything removed: the baseline's probability)."""
        return self.deletion_auc - float(self.deletion[:, -1].mean())

    @property
    def insertion_excess(self) -> float:
        """Area of the mean insertion curve above its start (the baseline's probability)."""
        return self.insertion_auc - float(self.insertion[:, 0].mean())

    @property
    def deletion_excess_per_sample(self) -> torch.Tensor:
        """Each sample's deletion area above its own end (their mean is :attr:`deletion_excess`)."""
        return torch.trapezoid(self.deletion, self.fractions, dim=1) - self.deletion[:, -1]

    @property
    def insertion_excess_per_sample(self) -> torch.Tensor:
        """Each sample's insertion area above its own start (their mean is :attr:`insertion_excess`)."""
        return torch.trapezoid(self.insertion, self.fractions, dim=1) - self.insertion[:, 0]

    def mean_curves(self) -> dict[str, list[float]]:
        return {"fraction": self.fractions.tolist(), "deletion": self.deletion.mean(0).tolist(),
                "insertion": self.insertion.mean(0).tolist()}


def perturbation_curves(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, scores: torch.Tensor,
                        steps: int = 16, baseline: torch.Tensor | None = None, batch_size: int = 256,
                        device: torch.device | None = None) -> Curves:
    """Deletion and insertion curves of ``inputs`` in the order of ``scores`` (like ``inputs``; highest first;
    ties keep index order) at ``steps + 1`` evenly spaced fractions."""
    device = device or torch.device("cpu")
    base = torch.zeros_like(inputs) if baseline is None else baseline.expand_as(inputs)
    flat_scores = scores.flatten(1)
    order = torch.argsort(-flat_scores, dim=1, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1]).expand_as(order).contiguous())
    fractions = torch.linspace(0, 1, steps + 1)
    counts = (fractions * order.shape[1]).round().long()
    deletion, insertion = [], []
    for count in counts.tolist():
        chosen = (rank < count).reshape(inputs.shape)
        deletion.append(_probability(model, torch.where(chosen, base, inputs), targets, batch_size, device))
        insertion.append(_probability(model, torch.where(chosen, inputs, base), targets, batch_size, device))
    return Curves(fractions, torch.stack(deletion, 1), torch.stack(insertion, 1))


def random_scores(like: torch.Tensor, seed: int) -> torch.Tensor:
    """A random ranking of the elements of every sample (seeded)."""
    return torch.rand(like.shape, generator=torch.Generator().manual_seed(seed))


def _probability(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int,
                 device: torch.device) -> torch.Tensor:
    parts = []
    with torch.no_grad():
        for start, batch in batches(inputs, batch_size, device):
            probs = torch.softmax(model(batch).float(), -1)
            parts.append(probs.gather(1, targets[start:start + batch.shape[0]].to(device).view(-1, 1)).squeeze(1))
    return torch.cat(parts).cpu()


def infidelity(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, attributions: torch.Tensor,
               noise: float = 0.1, perturbations: int = 8, seed: int = 0,
               device: torch.device | None = None) -> float:
    """captum's infidelity (Yeh et al. 2019) with Gaussian perturbations of ``noise`` times the inputs' standard
    deviation, attributions normalised to the best scale (lower is better; comparable between methods on the
    same inputs, not across models)."""
    from captum.metrics import infidelity as captum_infidelity

    device = device or torch.device("cpu")
    scale = noise * float(inputs.float().std())

    def perturb(x: torch.Tensor):
        delta = torch.randn_like(x) * scale
        return delta, x - delta

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        torch.manual_seed(seed)
        values = captum_infidelity(model, perturb, inputs.to(device), attributions.to(device),
                                   target=targets.to(device), n_perturb_samples=perturbations, normalize=True)
    return float(values.mean())
