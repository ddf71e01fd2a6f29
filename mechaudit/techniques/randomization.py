"""Sanity check of an attribution method by cascading model-parameter randomisation (Adebayo et al. 2018).

An attribution that explains the model must change when the model's learned parameters are destroyed. The
parameters of a copy of the model are re-drawn at random module by module, from the output layer down (the
cascade), and after each step the attributions of the same inputs (to the same target classes) are compared
with the original ones by Spearman rank correlation of their absolute values, per sample, over the input
elements that differ from the baseline (where the input equals the baseline, every path method attributes 0
whatever the model, which would count as agreement). A method whose attributions stay correlated with the
original once the model underneath is random (an edge detector) shows the input, not the model.

The verdict belongs to the end of the cascade (:attr:`RandomizationResult.final_correlation`): its early steps can
keep a high correlation legitimately, in a small network whose output layer is a thin readout of trained
features (a random readout of them still points at the inputs they depend on).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import rankdata
from torch import nn

from .. import linear_maps
from ..model_view import installed
from .attribution import differs_from_baseline

AttributionFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
"""``fn(model, inputs, targets) -> attributions`` shaped like ``inputs``."""

_REINITIALISED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)


@dataclass
class CascadeStep:
    """The attributions after randomising ``modules`` (cumulative, from the output down)."""

    module: str
    randomized: int
    rank_correlation: float
    #: The correlation of each sample that has at least two elements to rank (their mean is ``rank_correlation``).
    per_sample: tuple[float, ...] = ()


@dataclass
class RandomizationResult:
    steps: list[CascadeStep]
    samples: int

    @property
    def max_correlation(self) -> float:
        """The largest rank correlation anywhere in the cascade: how much of the attribution survives at worst."""
        return max(step.rank_correlation for step in self.steps)

    @property
    def final_correlation(self) -> float:
        """The rank correlation once every parameter is random."""
        return self.steps[-1].rank_correlation


def parameter_modules(model: nn.Module, sample: torch.Tensor) -> list[str]:
    """Modules with parameters of their own, in the order the forward pass first calls them (in a TorchScript
    archive, which refuses forward hooks: the order they are defined in)."""
    owners = {name: module for name, module in model.named_modules()
              if any(True for _ in module.parameters(recurse=False))}
    if any(isinstance(module, torch.jit.ScriptModule) for module in model.modules()):
        return list(owners)
    order: list[str] = []
    with installed(module.register_forward_hook(lambda _m, _i, _o, name=name: order.append(name))
                   for name, module in owners.items()), torch.no_grad():
        model(sample)
    return list(dict.fromkeys(order))


def _as_leaves(model: nn.Module) -> nn.Module:
    """A deep copy of a TorchScript module holds its parameters as non-leaf tensors (torch warns whenever their
    gradients are read): make them parameters again, in place, in the copy."""
    for module in model.modules():
        if isinstance(module, torch.jit.ScriptModule):
            for name, parameter in list(module.named_parameters(recurse=False)):
                if not parameter.is_leaf:
                    setattr(module, name, nn.Parameter(parameter.detach(), requires_grad=parameter.requires_grad))
    return model


def randomize_module(module: nn.Module) -> None:
    """Re-draw a module's own parameters: the framework's random initialisation for Linear, Conv and Embedding;
    any other parameter is shuffled (its values kept, their learned arrangement destroyed). Every draw comes from
    the CPU's generator, so an audit on CUDA randomises the same values as one on the CPU (CUDA's generator gave
    digits' L203 a 2.7 % different correlation on an H200)."""
    if isinstance(module, _REINITIALISED):
        own = [p for p in module.parameters(recurse=False) if p.device.type != "meta"]
        devices = [p.device for p in own]
        with torch.no_grad():
            for parameter in own:
                parameter.data = parameter.data.cpu()
            module.reset_parameters()
            for parameter, device in zip(own, devices):
                parameter.data = parameter.data.to(device)
        return
    if linear_maps.is_transposed(module):  # Hugging Face's Conv1D: drawn as an nn.Linear of its shape would be
        fresh = nn.Linear(linear_maps.in_features(module), linear_maps.out_features(module),
                          bias=getattr(module, "bias", None) is not None, dtype=module.weight.dtype)
        with torch.no_grad():
            module.weight.copy_(linear_maps.stored(module, fresh.weight))
            if fresh.bias is not None:
                module.bias.copy_(fresh.bias)
        return
    with torch.no_grad():
        for parameter in module.parameters(recurse=False):
            flat = parameter.view(-1)
            flat.copy_(flat[torch.randperm(flat.numel()).to(flat.device)])


def rank_correlations(original: torch.Tensor, other: torch.Tensor, support: torch.Tensor) -> list[float]:
    """Per sample, the Spearman correlation of ``|original|`` and ``|other|`` over ``support``; a sample whose
    attributions are constant on its support counts as 0 (no shared ranking), one with fewer than two elements
    there is left out."""
    a, b = original.abs().flatten(1).numpy(), other.abs().flatten(1).numpy()
    keep = support.flatten(1).numpy()
    values = []
    for row_a, row_b, row_keep in zip(a, b, keep):
        if row_keep.sum() < 2:
            continue
        rank_a, rank_b = rankdata(row_a[row_keep]), rankdata(row_b[row_keep])
        if rank_a.std() == 0 or rank_b.std() == 0:
            values.append(0.0)
            continue
        values.append(float(np.corrcoef(rank_a, rank_b)[0, 1]))
    if not values:
        raise ValueError("no sample has two input elements that differ from the baseline: nothing to rank")
    return values


def cascading_randomization(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, attribute: AttributionFn,
                            seed: int = 0, max_evaluations: int = 6,
                            baseline: torch.Tensor | None = None) -> RandomizationResult:
    """Randomise a copy of ``model`` from the output down and compare attributions after each step.

    With more modules than ``max_evaluations``, the attributions are compared at that many evenly spaced steps of
    the cascade, always including the first (output module alone) and the last (every module random).
    """
    original = attribute(model, inputs, targets)
    support = differs_from_baseline(inputs.cpu(), None if baseline is None else baseline.cpu())
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    shadow = _as_leaves(copy.deepcopy(model))
    modules = dict(shadow.named_modules())
    cascade = list(reversed(parameter_modules(shadow, inputs[:2].to(device))))
    if not cascade:
        raise ValueError("the model has no parameters to randomise")
    checkpoints = set(np.linspace(0, len(cascade) - 1, min(max_evaluations, len(cascade))).round().astype(int))
    steps = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # manual_seed seeds CUDA too
        torch.manual_seed(seed)
        for index, name in enumerate(cascade):
            randomize_module(modules[name])
            if index in checkpoints:
                per_sample = rank_correlations(original, attribute(shadow, inputs, targets), support)
                steps.append(CascadeStep(name, index + 1, float(np.mean(per_sample)), tuple(per_sample)))
    return RandomizationResult(steps, int(inputs.shape[0]))
