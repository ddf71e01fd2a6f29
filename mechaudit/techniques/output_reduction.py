"""One value per sample from a model with several outputs per sample (a forecaster's (samples, horizon)).

A regression model may predict several values per sample. Statistics (output similarity, dimensionality) use the
raw outputs; rules that need one value per sample (the circuit rules' behaviour, activation patching) read the
outputs reduced by ``[task] output``: ``"mean"`` (the mean over every output of a sample, the default) or an
index (that output alone, counted over the flattened outputs of a sample).
"""

from __future__ import annotations

import torch

MEAN = "mean"
Reduction = str | int
"""``"mean"`` or the index of one output."""


def output_count(outputs: torch.Tensor) -> int:
    """Outputs per sample (1 for outputs of shape (samples,))."""
    return int(outputs[0].numel()) if outputs.dim() > 1 else 1


def reduce_outputs(outputs: torch.Tensor, reduction: Reduction = MEAN) -> torch.Tensor:
    """(samples,): each sample's outputs reduced by ``reduction``."""
    flat = outputs.reshape(outputs.shape[0], -1)
    if reduction == MEAN:
        return flat.mean(1)
    return flat[:, int(reduction)]


def check_reduction(outputs: torch.Tensor, reduction: Reduction) -> None:
    """Raise ``ValueError`` when ``reduction`` names no output of ``outputs``."""
    if reduction != MEAN and not 0 <= int(reduction) < output_count(outputs):
        raise ValueError(f"output {reduction} does not exist: the model gives {output_count(outputs)} output(s) "
                         "per sample")


def reduced_output(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """A circuit behaviour (``behaviour(outputs, targets)``): the reduced regression output, ``targets`` holding
    the output index per sample, or -1 for the mean over a sample's outputs."""
    flat = outputs.reshape(outputs.shape[0], -1)
    index = targets.reshape(-1).long()
    chosen = flat.gather(1, index.clamp(min=0).view(-1, 1)).squeeze(1)
    return torch.where(index < 0, flat.mean(1), chosen)


def reduction_targets(reduction: Reduction, samples: int) -> torch.Tensor:
    """The ``targets`` for :func:`reduced_output`."""
    return torch.full((samples,), -1 if reduction == MEAN else int(reduction), dtype=torch.long)


def describe(reduction: Reduction) -> str:
    return "the mean of each sample's outputs" if reduction == MEAN else f"output {reduction} of each sample"
