"""Forward passes that end once their hooks have recorded what they need.

A pass run only for what hooks record (a reference run's activations, a layer's input on other inputs, a mean
trace) need not compute the rest of the model: for a language model the rest includes the vocabulary projection,
whose logits (samples x tokens x vocabulary) are the largest tensor of the pass. A hook raises :class:`EnoughSeen`
once it has seen everything; :func:`forward_until_seen` runs the model and ends there. Only for passes whose output
is not used, and only where the layer's calls are known (a layer called once per pass, or as often as counted on a
full pass of the same model): a later call of the same layer would otherwise be missed.
"""

from __future__ import annotations

import torch
from torch import nn


class EnoughSeen(Exception):
    """Raised by a recording hook when everything the pass is run for has been recorded."""


def forward_until_seen(model: nn.Module, inputs: torch.Tensor) -> None:
    """``model(inputs)`` for its hooks' sake, ended early where a hook raises :class:`EnoughSeen`."""
    try:
        model(inputs)
    except EnoughSeen:
        pass


def all_seen(calls: dict[str, int], expected: dict[str, int] | None) -> bool:
    """Whether every layer in ``expected`` has been called (``calls``) at least as often as expected; False when
    nothing is expected (``None``: run the whole pass)."""
    return expected is not None and all(calls.get(name, 0) >= count for name, count in expected.items())
