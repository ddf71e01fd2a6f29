"""Input attributions with captum, batched, on the model's device.

Methods (``METHODS``), each a captum class with the same call:

* ``integrated_gradients`` (Sundararajan et al. 2017): gradients integrated along the straight path from the
  baseline (zeros) to the input, ``n_steps`` steps;
* ``saliency`` (Simonyan et al. 2014): the plain gradient of the target logit;
* ``deeplift`` (Shrikumar et al. 2017): the Rescale rule, relative to the baseline; needs ReLUs as modules
  (functional ReLUs fall back to gradients, as captum warns);
* ``gradient_shap`` (Lundberg and Lee 2017): expected gradients at ``n_steps`` random points between the
  baseline and the input (seeded);
* ``lrp`` (Bach et al. 2015): layer-wise relevance propagation (epsilon rule); only models made of modules
  captum has rules for (Linear, Conv, ReLU, pooling): anything else raises a ``ValueError`` saying so.

``ATTRIBUTORS`` maps each name to a function ``(model, batch, targets, baseline, n_steps, internal_batch_size) ->
attributions`` (``internal_batch_size``: at most this many inputs per forward pass, captum's argument, where the
method evaluates several inputs per sample); a notebook can add its own there and check it with :mod:`.randomization`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn

Attributor = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, int, int], torch.Tensor]


def _integrated_gradients(model, batch, targets, baseline, n_steps, internal_batch_size):
    from captum.attr import IntegratedGradients

    return IntegratedGradients(model).attribute(batch, baselines=baseline, target=targets, n_steps=n_steps,
                                                internal_batch_size=internal_batch_size)


def _saliency(model, batch, targets, baseline, n_steps, internal_batch_size):
    from captum.attr import Saliency

    return Saliency(model).attribute(batch, target=targets, abs=False)


def _deeplift(model, batch, targets, baseline, n_steps, internal_batch_size):
    from captum.attr import DeepLift

    return DeepLift(model).attribute(batch, baselines=baseline, target=targets)


def _gradient_shap(model, batch, targets, baseline, n_steps, internal_batch_size):
    from captum.attr import GradientShap

    return GradientShap(model).attribute(batch, baselines=baseline[:1], target=targets, n_samples=n_steps,
                                         stdevs=0.0)


def _lrp(model, batch, targets, baseline, n_steps, internal_batch_size):
    from captum.attr import LRP

    try:
        return LRP(model).attribute(batch, target=targets)
    except (TypeError, NotImplementedError, AttributeError, RuntimeError) as exc:
        raise ValueError(f"LRP does not support this model ({type(exc).__name__}: {exc}); choose another "
                         "attribution method") from None


ATTRIBUTORS: dict[str, Attributor] = {
    "integrated_gradients": _integrated_gradients,
    "saliency": _saliency,
    "deeplift": _deeplift,
    "gradient_shap": _gradient_shap,
    "lrp": _lrp,
}
METHODS: tuple[str, ...] = tuple(ATTRIBUTORS)


def attribute(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, device: torch.device,
              method: str = "integrated_gradients", baseline: torch.Tensor | None = None, n_steps: int = 32,
              batch_size: int = 64, seed: int = 0, internal_batch_size: int | None = None) -> torch.Tensor:
    """Attribution of each input element to the ``targets`` logits, shape like ``inputs`` (CPU).

    ``batch_size`` samples are attributed at a time; ``internal_batch_size`` (default ``8 * batch_size``) bounds
    the inputs per forward pass of a method that evaluates several per sample (integrated gradients' steps): the
    rules pass the audit's ``--batch-size``.

    ``baseline`` (default zeros) is broadcast to the inputs, or gives one baseline per sample (shaped like them).
    Stochastic methods draw from a generator seeded with ``seed``, so the same call gives the same attributions
    whatever ran before it.
    """
    if method not in ATTRIBUTORS:
        raise ValueError(f"unknown attribution method '{method}' (known: {', '.join(ATTRIBUTORS)})")
    if not inputs.is_floating_point():
        raise ValueError("input attribution needs real-valued inputs; these are integers (token ids?)")
    run = ATTRIBUTORS[method]
    parts = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # captum warns about functional ReLUs and hooks it sets itself
        torch.manual_seed(seed)
        for start in range(0, inputs.shape[0], batch_size):
            batch = inputs[start:start + batch_size].to(device).requires_grad_(True)
            target = targets[start:start + batch_size].to(device)
            if baseline is not None and baseline.shape == inputs.shape:  # one baseline per sample
                base = baseline[start:start + batch_size].to(device, batch.dtype)
            else:
                base = (torch.zeros_like(batch) if baseline is None
                        else baseline.to(device, batch.dtype).expand_as(batch).contiguous())
            parts.append(run(model, batch, target, base, n_steps, internal_batch_size or batch.shape[0] * 8)
                         .detach().float().cpu())
    model.zero_grad(set_to_none=True)
    return torch.cat(parts)


def differs_from_baseline(inputs: torch.Tensor, baseline: torch.Tensor | None = None) -> torch.Tensor:
    """Where each input element differs from the baseline (bool, like ``inputs``): elsewhere every path method
    (integrated gradients, DeepLift, gradient SHAP, LRP) attributes 0 by construction, whatever the model."""
    reference = torch.zeros_like(inputs) if baseline is None else baseline.expand_as(inputs)
    return inputs != reference
