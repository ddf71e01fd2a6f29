"""Forward passes that end once their hooks have recorded what they need.

A pass run only for what hooks record (a reference run's activations, a layer's input on other inputs, a mean
trace) need not compute the rest of the model: for a language model the rest includes the vocabulary projection,
whose logits (samples x tokens x vocabulary) are the largest tensor of the pass. A hook raises :class:`EnoughSeen`
once it has seen everything; :func:`forward_until_seen` runs the model and ends there. Only for passes whose output
is not used.

Limits:

* call counts: a recorder stops once every recorded layer has run as often as on another pass (:func:`all_seen`):
  the reference run as often as on the clean run of the same batch, every batch of a mean trace as often as on the
  first batch (a full pass). The counts are assumed to be the same on every input. A model whose control flow
  depends on the input (an early exit, a loop run until convergence) may call a layer more often on another input:
  those later calls are then not recorded (a pass with fewer calls never stops early and runs in full, as without
  early stopping). Pairs checked by :func:`~.unit_split.unit_splits` stop early only when the later layer ran
  exactly once on the checked batch.
* side effects: the model's code stops in the middle of its forward. ``EnoughSeen`` derives from
  :class:`BaseException` (like :class:`GeneratorExit`), so that model code catching ``Exception`` (a fallback path
  that it then keeps using) does not catch it; a bare ``except:`` or ``except BaseException`` still would, and
  whatever the model changed before the stop (a cache, a counter) stays changed, while ``finally`` blocks and
  context managers in its code are run as the exception passes.
"""

from __future__ import annotations

import torch
from torch import nn


class EnoughSeen(BaseException):
    """Raised by a recording hook when everything the pass is run for has been recorded; caught by
    :func:`forward_until_seen` alone. A :class:`BaseException`, so that a model's ``except Exception`` lets it pass."""


def forward_until_seen(model: nn.Module, inputs: torch.Tensor) -> None:
    """``model(inputs)`` for its hooks' sake, ended early where a hook raises :class:`EnoughSeen` (any other
    exception, ``KeyboardInterrupt`` included, propagates)."""
    try:
        model(inputs)
    except EnoughSeen:
        pass


def all_seen(calls: dict[str, int], expected: dict[str, int] | None) -> bool:
    """Whether every layer in ``expected`` has been called (``calls``) at least as often as expected; False when
    nothing is expected (``None``: run the whole pass)."""
    return expected is not None and all(calls.get(name, 0) >= count for name, count in expected.items())
