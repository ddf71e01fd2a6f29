"""The plan of an audit: each rule's estimated cost (:mod:`mechaudit.cost`) against the rule time-out and the free
memory, decided before any rule runs. A rule that would not fit is *reduced* (its declared parameter, e.g.
``samples``, lowered until it fits; its findings say so) or *refused* (an ``error`` finding saying how to lift the
budget). Time is judged with a safety factor (:data:`TIME_SAFETY`): a rule is reduced or refused only when its
estimate exceeds the time-out that many times over, as the calibration behind the estimate is a wall-clock timing
that varies with the machine's load; the wall-clock time-out stays the backstop for estimates that are wrong."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .cost import GENERIC, Calibration, Cost, RuleCost, Sizes

TIME_SAFETY = 2.0
"""A rule is reduced or refused for time only when its estimate exceeds ``TIME_SAFETY`` times the rule time-out
(the same plan whether the machine is idle or loaded; the time-out itself still stops a rule that runs over)."""


#: The plan's note where the calibration's threads waited on each other.
CONTENDED = ("; the calibration's threads waited on each other (more threads than free cores: a busy machine); "
             "the estimates leave out those waits; OMP_NUM_THREADS=1 may run faster")


@dataclass
class RulePlan:
    """One rule's line in the plan: its estimate, and what the budget does to it (``run``, ``reduce``,
    ``refuse`` or ``skip``); ``reduced`` maps a parameter to (its value, the value it runs with)."""

    rule_id: str
    forward: float
    backward: float
    flops: float
    peak_bytes: float
    seconds: float
    action: str = "run"
    reduced: dict[str, tuple[int, int]] = field(default_factory=dict)
    reason: str = ""

    def to_dict(self) -> dict:
        return {"rule": self.rule_id, "action": self.action, "forward_passes": round(self.forward),
                "backward_passes": round(self.backward), "flops": float(f"{self.flops:.3g}"),
                "peak_bytes": int(self.peak_bytes), "estimated_seconds": round(self.seconds, 3),
                **({"reduced": {k: {"from": a, "to": b} for k, (a, b) in self.reduced.items()}} if self.reduced
                   else {}), **({"reason": self.reason} if self.reason else {})}

    def label(self) -> dict:
        """What a reduced rule's findings record (evidence ``budget_reduction``)."""
        return {"reduced": {k: {"from": a, "to": b} for k, (a, b) in self.reduced.items()}, "reason": self.reason}


@dataclass
class Plan:
    """The plan of an audit: the calibration, the budgets it was held to, and one :class:`RulePlan` per rule."""

    calibration: Calibration
    rule_timeout: int
    memory_bytes: int
    rules: list[RulePlan]

    def to_dict(self) -> dict:
        return {"calibration": self.calibration.to_dict(), "rule_timeout": self.rule_timeout,
                "available_bytes": self.memory_bytes, "rules": [entry.to_dict() for entry in self.rules]}

    def entry(self, rule_id: str) -> RulePlan | None:
        return next((entry for entry in self.rules if entry.rule_id == rule_id), None)

    def lines(self) -> list[str]:
        """The plan as a table for the terminal."""
        head = (f"plan: {len(self.rules)} rules; rule time-out {self.rule_timeout or 'none'}"
                f"{' s' if self.rule_timeout else ''}; {_size(self.memory_bytes)} free; a sample-forward takes "
                f"{self.calibration.forward_seconds * 1e3:.3g} ms, a sample-backward "
                f"{self.calibration.backward_seconds * 1e3:.3g} ms"
                f"{'' if self.calibration.backward_measured else ' (assumed: 2 forwards)'}"
                f"{_threads(self.calibration.threads)}"
                f"{CONTENDED if self.calibration.contended else ''}")
        rows = [f"{'rule':<6}{'action':<8}{'forward':>10}{'backward':>10}{'memory':>10}{'est. s':>9}  note"]
        for e in self.rules:
            note = "; ".join(filter(None, [", ".join(f"{k} {a} -> {b}" for k, (a, b) in e.reduced.items()),
                                           e.reason]))
            rows.append(f"{e.rule_id:<6}{e.action:<8}{_count(e.forward):>10}{_count(e.backward):>10}"
                        f"{_size(e.peak_bytes):>10}{e.seconds:>9.3g}  {note}")
        total = sum(e.seconds for e in self.rules if e.action in ("run", "reduce"))
        return [head, *rows, f"estimated total: {total:.3g} s"]


def plan_rules(rules: list, sizes: Sizes, calibration: Calibration, rule_timeout: int, memory_bytes: int,
               skipped: Callable[[Any], str | None] = lambda rule: None) -> Plan:
    """Estimate every rule in order (shared artifacts charged to the first rule that runs and needs them) and
    decide, before anything runs, which fit the budgets as they are, which run reduced and which are refused.
    ``skipped(rule)`` gives the reason a rule will be skipped (a missing need), or None."""
    ready = {rule.id: skipped(rule) for rule in rules}
    declared: dict[str, Cost] = {}  # the shared artifacts' costs, as the rules that define them declare them
    for rule in rules:
        if not ready[rule.id]:
            for name, part in _model(rule).estimate(sizes, rule.params).shared:
                if part is not None:
                    declared.setdefault(name, part)
    charged: set[str] = set()
    entries = []
    for rule in rules:
        if ready[rule.id]:
            entries.append(RulePlan(rule.id, 0, 0, 0, 0, 0.0, "skip", reason=ready[rule.id]))
            continue
        model = _model(rule)
        entry = _judge(rule, model, sizes, calibration, rule_timeout, memory_bytes,
                       lambda cost: _total(cost, charged, declared))
        if entry.action != "refuse":
            charged.update(name for name, _ in model.estimate(sizes, _params(rule, entry)).shared)
        entries.append(entry)
    return Plan(calibration, rule_timeout, memory_bytes, entries)


def _model(rule: Any) -> RuleCost:
    return getattr(rule.check, "cost", None) or GENERIC


def _params(rule: Any, entry: RulePlan) -> Any:
    return dataclasses.replace(rule.params, **{k: b for k, (_, b) in entry.reduced.items()})


def _total(cost: Cost, charged: set[str], declared: dict[str, Cost]) -> Cost:
    """``cost`` plus the shared costs not yet paid by an earlier rule (an artifact this rule only uses: at the
    cost the defining rule declares)."""
    total = Cost(cost.forward, cost.backward, cost.flops, cost.peak_bytes, cost.calls)
    seen = set(charged)
    for name, part in cost.shared:
        part = part if part is not None else declared.get(name)
        if name not in seen and part is not None:
            seen.add(name)
            total = total + part
    return total


def _judge(rule: Any, model: RuleCost, sizes: Sizes, calibration: Calibration, timeout: int, memory: int,
           total: Callable[[Cost], Cost]) -> RulePlan:
    def entry(params: Any) -> RulePlan:
        cost = total(model.estimate(sizes, params))
        return RulePlan(rule.id, cost.forward, cost.backward, cost.flops, cost.peak_bytes, cost.seconds(calibration))

    def fits(plan: RulePlan) -> bool:
        return not _over_time(plan, timeout) and plan.peak_bytes <= memory

    first = entry(rule.params)
    if fits(first):
        return first
    over = _over(first, timeout, memory)
    name = model.reduce
    current = getattr(rule.params, name, None) if name else None
    if isinstance(current, int) and current > model.floor:
        low, high, best = model.floor, current - 1, None
        while low <= high:  # the largest value that fits (estimates grow with the parameter)
            middle = (low + high) // 2
            trial = entry(dataclasses.replace(rule.params, **{name: middle}))
            if fits(trial):
                best, low = (middle, trial), middle + 1
            else:
                high = middle - 1
        if best is not None:
            value, plan = best
            plan.action, plan.reduced = "reduce", {name: (current, value)}
            plan.reason = f"{name} lowered from {current} to {value} to fit: as set, {over}"
            return plan
    first.action = "refuse"
    lowest = f" (even with {name} = {model.floor})" if isinstance(current, int) and current > model.floor else ""
    first.reason = f"refused before running: {over}{lowest}; {_lift(first, timeout, memory, name)}"
    return first


def _over(plan: RulePlan, timeout: int, memory: int) -> str:
    """Which budget the estimate exceeds, in words."""
    parts = []
    if _over_time(plan, timeout):
        parts.append(f"an estimated {plan.seconds:.3g} s ({_count(plan.forward)} sample-forwards, "
                     f"{_count(plan.backward)} sample-backwards) exceeds {TIME_SAFETY:g} x --rule-timeout {timeout} s")
    if plan.peak_bytes > memory:
        parts.append(f"an estimated peak of {_size(plan.peak_bytes)} exceeds the {_size(memory)} of free memory")
    return " and ".join(parts)


def _lift(plan: RulePlan, timeout: int, memory: int, name: str | None) -> str:
    """How to lift the budget that refused ``plan``."""
    if _over_time(plan, timeout):
        needed = int(math.ceil(plan.seconds * 1.5 / 60) * 60)
        return (f"lift it with --rule-timeout {needed} (0: no limit)" +
                (f" or lower the rule's {name}" if name else "") + " or --max-samples")
    return "lower --batch-size or --max-samples, or audit fewer layers (--layers)"


def _over_time(plan: RulePlan, timeout: int) -> bool:
    return bool(timeout) and plan.seconds > TIME_SAFETY * timeout


def _count(value: float) -> str:
    return f"{value:.3g}" if value < 1e5 else f"{value:.2e}"


def _size(value: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{int(value)} B"


def _threads(n: int) -> str:
    """`` (1 thread)``, `` (2 threads)``; nothing when unknown (0)."""
    return f" ({n} thread{'' if n == 1 else 's'})" if n else ""
