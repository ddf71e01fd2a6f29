"""What torch loads on first use, once per process, loaded before the rules run.

The first vector-Jacobian product with an explicit cotangent (``torch.autograd.grad(..., grad_outputs=v)``: edge
scores, the unit-split check, attribution patching) imports torch's symbolic-shape module and with it sympy:
0.30-0.39 CPU seconds on the development machine (one thread, torch 2.13), whatever the model's size. Paid inside a
rule, it lands on whichever gradient rule runs first (R301 on ``induction``: 0.52 s measured against 0.07 s
estimated) and counts against its time-out, though the cost model, which counts passes, cannot see it. Paid once
before the rules, by one tiny such product (public API only, so it loads whatever the installed torch loads
lazily there), it falls to the audit's setup instead, and each rule's time is the work the cost model counts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch

_LOG = logging.getLogger(__name__)


def warm_up_gradients(backward_passes: Iterable[float]) -> None:
    """When a rule that will run has backward passes (its estimate's ``backward_passes``), take one vector-Jacobian
    product of three values with an explicit cotangent, so that torch's lazy imports for it happen now. A failure
    is logged (debug) and left to the rules that need gradients to report, as their own ``error`` findings."""
    if not any(passes > 0 for passes in backward_passes):
        return
    try:
        _vjp()
    except Exception as error:  # noqa: BLE001 - a broken install: the first rule that needs it reports it
        _LOG.debug("gradient warm-up failed (left to the rules): %s", error)


def _vjp() -> None:
    """The smallest product that loads what a real one loads (a scalar gradient, without a cotangent, loads
    nothing)."""
    with torch.enable_grad():
        y = torch.ones(3, requires_grad=True)
        torch.autograd.grad(y * 2, y, grad_outputs=torch.ones(3))
