"""The audit's shared, sample-wise artifacts computed on this rank's shard of the samples and combined over ranks.

With one process these are exactly :func:`mechaudit.activations.model_outputs` and
:func:`~mechaudit.activations.unit_statistics`. Under ``torchrun`` each rank runs the model on its block of the
audit samples; outputs are gathered in sample order, and the streaming statistics are added (counts and float64
sums), or combined by ``max``/``min``, so that every rank holds the same artifacts as a single process would.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from . import distributed
from .activations import UnitStats, model_outputs, unit_statistics
from .model_view import Layer, ModelView


def outputs(model: nn.Module, inputs: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """The model's outputs on all ``inputs`` (CPU), each rank computing its shard."""
    with distributed.step():
        part = model_outputs(model, inputs[distributed.shard(len(inputs))], batch_size, device)
    return distributed.gather(part)


def statistics(view: ModelView, layers: list[Layer], inputs: torch.Tensor, batch_size: int,
               device: torch.device) -> dict[str, UnitStats]:
    """:class:`UnitStats` of every layer over all ``inputs``, each rank streaming over its shard."""
    with distributed.step():
        local = unit_statistics(view, layers, inputs[distributed.shard(len(inputs))], batch_size, device)
    if not distributed.active():
        return local
    if not distributed.same_everywhere(sorted(local)):
        raise RuntimeError("ranks recorded different layers (does the model's forward depend on the samples?)")
    inputs_recorded = {name: None if local[name].input_total is None else tuple(local[name].input_total.shape)
                       for name in local}
    if not distributed.same_everywhere(inputs_recorded):  # a layer's input of another shape on some rank
        local = {name: replace(stats, input_total=None) for name, stats in local.items()}
    return {name: combine(local[name]) for name in sorted(local)}


def combine(stats: UnitStats) -> UnitStats:
    """One layer's statistics summed (or max/min-ed) over all ranks."""
    count = distributed.reduce(torch.tensor([stats.count], dtype=torch.int64))
    return UnitStats(int(count.item()), distributed.reduce(stats.max, "max"), distributed.reduce(stats.min, "min"),
                     distributed.reduce(stats.active), distributed.reduce(stats.total),
                     distributed.reduce(stats.always),
                     None if stats.input_total is None else distributed.reduce(stats.input_total))
