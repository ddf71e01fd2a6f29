"""What torch imports on first use, once per process, imported before the rules run.

The first vector-Jacobian product with an explicit cotangent (``torch.autograd.grad(..., grad_outputs=v)``: edge
scores, the unit-split check, attribution patching) imports torch's symbolic-shape module and with it sympy:
0.30-0.38 CPU seconds on the development machine (one thread), whatever the model's size. Paid inside a rule, it
lands on whichever gradient rule runs first (R301 on ``induction``: 0.52 s measured against 0.07 s estimated) and
counts against its time-out, though the cost model, which counts passes, cannot see it. Imported once before the
rules, it is paid by the audit's setup instead, and each rule's time is the work the cost model counts.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Iterable

#: Imported by torch on the first ``torch.autograd.grad`` (or ``backward``) given a cotangent tensor.
AUTOGRAD_SHAPE_CHECKS = "torch.fx.experimental.symbolic_shapes"


def import_for_gradients(backward_passes: Iterable[float]) -> float:
    """Import :data:`AUTOGRAD_SHAPE_CHECKS` when a rule that will run has backward passes (its estimate's
    ``backward_passes``); returns the seconds it took (0 when none needs it or it was imported already)."""
    if not any(passes > 0 for passes in backward_passes):
        return 0.0
    start = time.perf_counter()
    try:
        importlib.import_module(AUTOGRAD_SHAPE_CHECKS)
    except ImportError:  # a broken install: the first rule that needs it reports it, as an error finding
        return 0.0
    return time.perf_counter() - start
