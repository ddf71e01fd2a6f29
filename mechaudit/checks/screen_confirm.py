"""A screen's selection confirmed exactly within the rule's time budget: the most important first."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .. import deadline
from ..techniques import atp


def confirm_selection(selection: atp.Selection, run: Callable[[list[int]], object], what: str, seed: int,
                      ranked: Sequence[int] | None = None,
                      weights: Callable[[list[int]], list[float]] | None = None,
                      estimate: float | None = None) -> atp.Selection:
    """Run the exact check ``run`` on ``selection``'s components, in chunks, while the rule's time budget allows
    (:func:`~mechaudit.deadline.confirm`, which records a cut of ``what``): first ``ranked`` (the top-k and the
    extra ones by importance; default the top-k in the screen's order, then the extra ones), then the calibration
    sample in a seeded random order, so that a cut keeps the checks verdicts rest on and a random sample.
    ``weights`` gives the relative cost of each component in that order (default 1 each), ``estimate`` the seconds
    per unit of weight expected before one has run (default: unknown). Returns the selection of the components that
    ran."""
    first = list(ranked) if ranked is not None else [*selection.top, *selection.extra]
    order = torch.randperm(len(selection.calibration), generator=torch.Generator().manual_seed(seed)).tolist()
    items = first + [selection.calibration[i] for i in order]
    done = set(deadline.confirm(items, run, what, weights(items) if weights else None, estimate))
    return atp.Selection([i for i in selection.top if i in done], [i for i in selection.calibration if i in done],
                         selection.scored, [i for i in selection.extra if i in done])
