"""Checks are registered by name, each with the rule it implements: id, name, default severity, documentation.

One rule, one place (ruff's model): a check module holds the rule's documentation (:class:`RuleDocs`), its
parameters with their defaults, ranges and one-line docs (:func:`param`), what it needs, and the check itself.
Rulebooks select rules and may override their severity and parameters; they never restate them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..needs import NEEDS

if TYPE_CHECKING:
    from ..cost import RuleCost

DOC_SECTIONS = ("summary", "what", "why", "how", "fix", "references")


def param(default: Any, *, low: float | None = None, high: float | None = None,
          choices: tuple[str, ...] | None = None, doc: str = "") -> Any:
    """A check parameter with its default, allowed range or choices, and a one-line description."""
    return dataclasses.field(default=default, metadata={"low": low, "high": high, "choices": choices, "doc": doc})


@dataclass(frozen=True)
class RuleDocs:
    """A rule's documentation, shown by ``mechaudit explain`` and in every report: a one-line summary, what it
    checks, why it matters, how it is measured (method, paper, and the measurements behind its thresholds), how to
    fix what it finds, and references."""

    summary: str
    what: str
    why: str
    how: str
    fix: str
    references: tuple[str, ...]

    def __post_init__(self) -> None:
        for section in DOC_SECTIONS[:-1]:
            object.__setattr__(self, section, getattr(self, section).strip())


@dataclass(frozen=True)
class RuleDefinition:
    """The rule a check implements: its id (``D101``), name (``dead-units``), default severity, documentation, and
    whether it is opt-in (left out of the default selection; any explicit selector that covers it runs it)."""

    id: str
    name: str
    severity: str
    docs: RuleDocs
    opt_in: bool = False


@dataclass(frozen=True)
class Check:
    """A check: the function that runs it, its parameter dataclass, what it needs from the model and data, the
    rule it implements (None for a check registered without one, e.g. in tests), and its evidence contract: a
    ``TypedDict`` (``total=False``) of every key its findings' evidence may hold; and its cost model
    (:class:`~mechaudit.cost.RuleCost`; None: the generic estimate), which the audit's plan reads. The report's
    figure drawer (:data:`mechaudit.report.figures.DRAWERS`) and template (``templates/findings/<name>.html.j2``)
    are registered under the check's name and read only keys of that contract
    (``tests/test_evidence_contracts.py``)."""

    name: str
    run: Callable[..., list]
    params: type
    needs: tuple[str, ...]
    rule: RuleDefinition | None = None
    evidence: type | None = None
    cost: RuleCost | None = None

    @property
    def evidence_keys(self) -> frozenset[str]:
        """The keys of :attr:`evidence` (empty without a contract)."""
        return frozenset(getattr(self.evidence, "__annotations__", {}))


CHECKS: dict[str, Check] = {}


def register(name: str, params: type, needs: tuple[str, ...] = (), rule: RuleDefinition | None = None,
             evidence: type | None = None, cost: RuleCost | None = None) -> Callable:
    """Decorator: ``@register("dead_units", DeadUnitsParams, needs=("layers",), rule=RULE, evidence=...,
    cost=RuleCost(estimate))``."""
    unknown = set(needs) - set(NEEDS)
    if unknown:
        raise ValueError(f"check {name}: unknown needs {sorted(unknown)}")
    if rule is not None:
        taken = next((c.name for c in CHECKS.values() if c.rule and c.rule.id == rule.id and c.name != name), None)
        if taken:
            raise ValueError(f"check {name}: rule {rule.id} is already defined by check {taken}")

    def decorate(run: Callable) -> Callable:
        CHECKS[name] = Check(name, run, params, needs, rule, evidence, cost)
        return run
    return decorate


def rule_definitions() -> dict[str, tuple[Check, RuleDefinition]]:
    """Every rule the registered checks define, by id (sorted)."""
    found = {c.rule.id: (c, c.rule) for c in CHECKS.values() if c.rule is not None}
    return dict(sorted(found.items()))
