"""The time a rule has left: the engine's rule time-out as a deadline that checks read, so that a check confirming
many screened candidates exactly stops in time, with a reduced result it labels, instead of running into the
time-out (an ``error`` finding that loses all its work).

The engine enters :func:`within` with each rule's time-out (one budget per attempt, so an out-of-memory retry starts
afresh, as its timer does); a nested budget ends at the earlier of its own deadline and the enclosing one. A check
runs its exact checks through :func:`confirm`, most important first, and the cut, if any, is recorded on the budget
(:class:`Cut`) for the engine to label every finding of the rule with."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import TypeVar

T = TypeVar("T")

#: The share of a rule's time budget kept for what follows its exact checks (verdicts, bootstrap intervals,
#: pictures of the flagged units): confirmation stops when the next chunk would eat into it.
RESERVE = 0.15
#: Each chunk's estimated time (the mean time per check so far, times its size) is multiplied by this, since the
#: machine's load may grow while the chunk runs.
SAFETY = 1.5

#: The clock deadlines are read on (tests replace it with a fake one).
clock: Callable[[], float] = time.monotonic


@dataclass(frozen=True)
class Cut:
    """Exact checks that a rule planned and did not run for lack of time: the first ``ran`` of ``planned``."""

    what: str  # e.g. "exact ablations"
    planned: int
    ran: int
    rule: str = ""  # the rule whose budget made the cut ("": unknown, a budget the engine did not name)

    def note(self) -> str:
        return f"{self.ran} of {self.planned} planned {self.what}"


@dataclass(frozen=True)
class Fixed:
    """What a :func:`confirm` ``run`` returns when its chunks cost ``seconds`` whatever their size (measured)."""

    seconds: float


@dataclass
class Budget:
    """A rule's time budget: ``seconds`` long (0: none), ending at ``deadline`` on :data:`clock` (None: never),
    keeping ``reserve`` seconds for the rule to finish; ``cuts`` are the confirmations it stopped early; ``rule``:
    the rule it bounds (set by the engine; a nested budget inherits it)."""

    seconds: float
    deadline: float | None
    reserve: float
    cuts: list[Cut] = field(default_factory=list)
    rule: str = ""

    def left(self) -> float | None:
        """Seconds left for exact checks (the reserve excluded), or None without a deadline."""
        return None if self.deadline is None else self.deadline - self.reserve - clock()


_current: ContextVar[Budget | None] = ContextVar("mechaudit_budget", default=None)


@contextmanager
def within(seconds: float) -> Iterator[Budget]:
    """A budget of ``seconds`` (0: none of its own) from now, ending no later than the enclosing one; the cuts
    recorded inside also reach the enclosing budget."""
    outer = _current.get()
    own = Budget(seconds, clock() + seconds, RESERVE * seconds) if seconds else Budget(0, None, 0.0)
    if outer is not None and outer.deadline is not None:  # no later than the outer one, in its end and its stop
        deadline = outer.deadline if own.deadline is None else min(own.deadline, outer.deadline)
        stop = min(outer.deadline - outer.reserve, deadline if own.deadline is None else own.deadline - own.reserve)
        own = Budget(own.seconds, deadline, deadline - stop)
    if outer is not None:
        own.rule = outer.rule
    token = _current.set(own)
    try:
        yield own
    finally:
        _current.reset(token)
        if outer is not None:
            outer.cuts.extend(own.cuts)


def current() -> Budget | None:
    """The innermost budget, or None outside any (a check run without the engine)."""
    return _current.get()


def confirm(items: Sequence[T], run: Callable[[list[T]], object], what: str,
            weights: Sequence[float] | None = None, estimate: float | None = None) -> list[T]:
    """Run ``run`` on ``items`` in their order (most important first), in chunks, while the time left allows; returns
    the items run and, when some were left out, records a :class:`Cut` naming ``what`` they are on the budget.

    The first chunk is one item; each next one at most twice the last, and only as many items as fit in half the
    time left before the reserve (a single item: in all of it), at the mean time per unit of ``weights`` so far
    (each item's relative cost, default 1) times :data:`SAFETY`. Before any item ran, that mean is ``estimate``
    (seconds per unit of weight, measured on similar work: the first item is then run only if it fits) or, without
    one, unknown: the first item runs whenever any time is left. Without a deadline, one chunk of every item.

    A ``run`` whose chunks cost a fixed time whatever their size (e.g. a rerun of the batches before the items' own
    work) returns that part of the chunk's seconds, measured, as :class:`Fixed`: it is left out of the time per
    unit, the next chunk is charged it once, and once the items' own time has measured above zero chunks are sized
    by the time left alone (no doubling, which would pay it again and again).

    Rank-local: no collective is made (a rule runs inside :func:`mechaudit.distributed.step`, where a rank that
    raises or has fewer items would leave the others waiting), so under torchrun each rank cuts on its own clock, and
    ranks that differ are reported like any other disagreement (``ranks_agree``)."""
    budget = current()
    if budget is None or budget.deadline is None:
        if items:
            run(list(items))
        return list(items)
    weight = [1.0] * len(items) if weights is None else [float(w) for w in weights]
    done, spent, size = 0, 0.0, 1
    fixed: float | None = None  # the fixed part of the last chunk's time, when ``run`` reports one
    fixed_spent = 0.0
    while done < len(items):
        left = budget.left() or 0.0
        if done:
            per_unit: float | None = max(spent - fixed_spent, 0.0) / sum(weight[:done]) * SAFETY
        else:
            per_unit = None if estimate is None else estimate * SAFETY
        if per_unit is None:  # no estimate yet: one item
            fits = 1 if left > 0 else 0
        else:
            room = left - (fixed or 0.0) * SAFETY
            fits = max(_fitting(weight[done:], per_unit, room / 2), min(1, _fitting(weight[done:], per_unit, room)))
        measured = fixed is not None and spent > fixed_spent  # the items' own time, not only the fixed cost
        size = min(len(items) if measured else size, len(items) - done, fits)
        if size <= 0:
            break
        start = clock()
        reported = run(list(items[done:done + size]))
        spent += clock() - start
        if isinstance(reported, Fixed):
            fixed = reported.seconds
            fixed_spent += reported.seconds
        done += size
        size *= 2
    if done < len(items):
        budget.cuts.append(Cut(what, len(items), done, budget.rule))
    return list(items[:done])


def starts(items: Sequence[T], run: Callable[[T], object], what: str, first: float) -> list[T]:
    """Run ``run`` on each of ``items`` in order while the time left holds ``first`` seconds (times :data:`SAFETY`):
    for items that stop themselves in time once started (each a :func:`confirm` of its own) and cost about
    ``first`` to start. Returns the items run; those never started are recorded as a :class:`Cut` naming ``what``."""
    budget = current()
    ran: list[T] = []
    for item in items:
        if budget is not None and budget.deadline is not None and (budget.left() or 0.0) < first * SAFETY:
            break
        run(item)
        ran.append(item)
    if budget is not None and len(ran) < len(items):
        budget.cuts.append(Cut(what, len(items), len(ran), budget.rule))
    return ran


def record(cuts: Sequence[Cut], artifact: str) -> None:
    """Record ``cuts`` on the current budget, each once: the cuts of a shared ``artifact`` (the circuit scores)
    that an earlier rule computed within its budget, so that every rule whose findings rest on it is labelled too,
    with the rule that made the cut named (the budget to raise is that rule's)."""
    budget = current()
    if budget is None:
        return
    for cut in cuts:
        if cut.rule and cut.rule != budget.rule:
            cut = replace(cut, what=f"{cut.what} (by {cut.rule}, for the {artifact} this rule reads)",
                          rule=budget.rule)
        if cut not in budget.cuts:
            budget.cuts.append(cut)


def running_out() -> bool:
    """Whether the rule has less than half its reserve left: optional work (a finding's pictures) is skipped then,
    so that the rule finishes."""
    budget = current()
    return budget is not None and budget.deadline is not None and budget.deadline - clock() < budget.reserve / 2


def _fitting(weights: Sequence[float], per_unit: float, seconds: float) -> int:
    """How many of the first ``weights`` fit in ``seconds`` at ``per_unit`` seconds per unit of weight."""
    total = 0.0
    for count, weight in enumerate(weights):
        total += weight * per_unit
        if total > seconds:
            return count
    return len(weights)

