"""Attacks confined to an input region: projected gradient descent (Madry et al. 2018) in an L-infinity ball,
through the Adversarial Robustness Toolbox (ART), with the perturbation masked to the region, against the same
attack over the whole input and against random noise of the same size in the region. Each yields the share of
predictions that change, per budget epsilon."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..activations import model_outputs
from .component_attack import random_sign_noise

KINDS = ("region", "whole_input", "noise")


@dataclass(frozen=True)
class AttackCurves:
    """Which predictions flip, per epsilon (absolute, in input units) and kind of perturbation: a boolean per
    attacked sample, so that a flip rate carries its bootstrap interval over the samples."""

    epsilons: list[float]
    flipped: dict[str, list[torch.Tensor]]

    @property
    def flip_rates(self) -> dict[str, list[float]]:
        """The share of predictions that flip, per kind and epsilon."""
        return {kind: [float(f.float().mean()) for f in flips] for kind, flips in self.flipped.items()}

    def smallest_epsilon(self, kind: str, share: float) -> float | None:
        """The smallest epsilon whose flip rate reaches ``share`` for ``kind``, or None when none does."""
        return next((e for e, r in zip(self.epsilons, self.flip_rates[kind]) if r >= share), None)


def attack_curves(model: nn.Module, inputs: torch.Tensor, before: torch.Tensor, mask: torch.Tensor,
                  epsilons: list[float], clip: tuple[float, float], classes: int, steps: int, batch_size: int,
                  device: torch.device, seed: int) -> AttackCurves:
    """The predictions (against ``before``, the model's own on ``inputs``) that PGD confined to ``mask``, PGD over
    the whole input, and random-sign noise of size epsilon in ``mask`` flip, for each epsilon; inputs stay in
    ``clip``."""
    x, y = inputs.detach().cpu().numpy().astype(np.float32), before.cpu().numpy()
    region = np.broadcast_to(mask.detach().cpu().numpy().astype(np.float32), x.shape).copy()
    generator = torch.Generator().manual_seed(seed)
    rates: dict[str, list[torch.Tensor]] = {kind: [] for kind in KINDS}
    flips = _flips(model, before, inputs.dtype, batch_size, device)
    for eps, attack in _attacks(model, inputs, epsilons, clip, classes, steps, batch_size, device):
        rates["region"].append(flips(attack.generate(x=x, y=y, mask=region)))
        rates["whole_input"].append(flips(attack.generate(x=x, y=y)))
        rates["noise"].append(flips(random_sign_noise(torch.from_numpy(x), eps, clip, generator,
                                                      torch.from_numpy(region))))
    return AttackCurves(list(epsilons), rates)


def untargeted_curves(model: nn.Module, inputs: torch.Tensor, before: torch.Tensor, epsilons: list[float],
                      clip: tuple[float, float], classes: int, steps: int, batch_size: int, device: torch.device,
                      seed: int) -> AttackCurves:
    """The predictions (against ``before``) that PGD over the whole input (``whole_input``) and random-sign noise of
    size epsilon over the whole input (``noise``) flip: what an attack on a component is read against."""
    x, y = inputs.detach().cpu().numpy().astype(np.float32), before.cpu().numpy()
    generator = torch.Generator().manual_seed(seed)
    rates: dict[str, list[torch.Tensor]] = {"whole_input": [], "noise": []}
    flips = _flips(model, before, inputs.dtype, batch_size, device)
    for eps, attack in _attacks(model, inputs, epsilons, clip, classes, steps, batch_size, device):
        rates["whole_input"].append(flips(attack.generate(x=x, y=y)))
        rates["noise"].append(flips(random_sign_noise(torch.from_numpy(x), eps, clip, generator)))
    return AttackCurves(list(epsilons), rates)


def predictions(model: nn.Module, inputs: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """The class the model predicts for each input (the argmax of its outputs, which ART attacks as logits): the
    one read of a prediction before and after every attack, in the same batches, so that a flip is the
    perturbation's and not a difference between two ways of running the model."""
    return model_outputs(model, inputs, batch_size, device).argmax(-1).cpu()


def _flips(model: nn.Module, before: torch.Tensor, dtype: torch.dtype, batch_size: int, device: torch.device):
    """Which predictions ``perturbed`` inputs change from ``before`` (a boolean per sample)."""
    before = before.cpu()

    def flips(perturbed) -> torch.Tensor:
        perturbed = torch.from_numpy(perturbed) if isinstance(perturbed, np.ndarray) else perturbed
        return predictions(model, perturbed.to(dtype), batch_size, device) != before
    return flips


def _attacks(model: nn.Module, inputs: torch.Tensor, epsilons: list[float], clip: tuple[float, float], classes: int,
             steps: int, batch_size: int, device: torch.device):
    """``(epsilon, ART's untargeted PGD at that budget)`` for each epsilon: steps of epsilon/4, no random start."""
    try:
        from art.attacks.evasion import ProjectedGradientDescent
        from art.estimators.classification import PyTorchClassifier
    except ImportError:
        raise RuntimeError("attacks need the Adversarial Robustness Toolbox: "
                           "pip install 'mechaudit[attacks]'") from None
    classifier = PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), input_shape=tuple(inputs.shape[1:]),
                                   nb_classes=classes, clip_values=clip,
                                   device_type="gpu" if device.type == "cuda" else "cpu")
    for eps in epsilons:
        yield eps, ProjectedGradientDescent(classifier, norm=np.inf, eps=eps, eps_step=eps / 4, max_iter=steps,
                                            num_random_init=0, batch_size=batch_size, verbose=False)
