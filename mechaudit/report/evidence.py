"""Any finding's evidence, shaped for generic rendering: scalars, lists of values, tables, and raw JSON.

Rules added later need no template of their own: a list of dicts becomes a table, a dict of scalars becomes
rows of the measurement table, a list of scalars a short list. Long lists are cut, saying how many items are
left out (all of them are in ``findings.json``); a cut never drops the rows or values that name what the finding
judged (its location's component, or the row or value it reports: the class it judged), and a table of the finding's
metric is ordered from the judged row outwards, so that the rows kept are the ones that matter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MAX_ROWS = 40
MAX_VALUES = 32
#: The PDF cuts tables shorter: the rows past these are in findings.json, which travels inside the PDF.
PRINT_MAX_ROWS = 8
PRINT_MAX_VALUES = 16


@dataclass(frozen=True)
class Block:
    """One piece of evidence: ``kind`` is ``value`` (one scalar), ``values`` (a list), ``table`` or ``json``."""

    key: str
    kind: str
    value: Any = None
    columns: list[str] = field(default_factory=list)
    rows: list[list[Any]] = field(default_factory=list)
    more: int = 0
    #: A cut list (``values``): each shown value's position in the whole list, so that a gap can be marked.
    positions: list[int] = field(default_factory=list)

    def gap_before(self, shown: int) -> bool:
        """Whether values were left out just before the ``shown``-th value shown (a judged value kept past the cut;
        before the first where the list's first values were cut)."""
        return shown < len(self.positions) and self.positions[shown] != (self.positions[shown - 1] + 1 if shown else 0)


@dataclass(frozen=True)
class Focus:
    """What a finding judged: its location's ``component``, and the ``value`` of its ``metric``."""

    component: str | None = None
    metric: str | None = None
    value: float | None = None

    @classmethod
    def of(cls, finding: Mapping[str, Any] | None) -> Focus:
        """The focus of a finding as findings.json writes it (no finding: none)."""
        if not isinstance(finding, Mapping):
            return cls()
        location, value = finding.get("location"), finding.get("value")
        component = location.get("component") if isinstance(location, Mapping) else None
        return cls(component if isinstance(component, str) else None, finding.get("metric"),
                   float(value) if _is_number(value) else None)

    def names(self, row: dict) -> bool:
        """Whether ``row`` names the component, or holds the judged value of the metric."""
        return (self.component is not None and self.component in row.values()) or self._distance(row) == 0.0

    def is_judged(self, key: str, value: Any) -> bool:
        """Whether ``value``, an item of the list ``key``, is the component, or the judged value in a list of the
        metric (named for it, or its plural: a number elsewhere equal to it by chance judges nothing)."""
        if _is_number(value):
            return (self.value is not None and key in (self.metric, f"{self.metric}s")
                    and math.isclose(value, self.value, rel_tol=1e-6, abs_tol=1e-9))
        return self.component is not None and value == self.component

    def ordered(self, rows: list[dict]) -> list[dict]:
        """Rows per class (a column named for the class) from the judged one outwards (by distance from the
        finding's value: worst first whichever way the metric points) when every row holds the metric and one holds
        the finding's value; any other table (a curve, a cascade: ordered for a reason) unchanged."""
        distances = [self._distance(row) for row in rows]
        if None in distances or 0.0 not in distances or not any("class" in str(key) for key in rows[0]):
            return rows
        return [row for _, row in sorted(zip(distances, rows), key=lambda pair: pair[0])]

    def _distance(self, row: dict) -> float | None:
        own = row.get(self.metric) if self.metric else None
        if self.value is None or not _is_number(own):
            return None
        return 0.0 if math.isclose(own, self.value, rel_tol=1e-6, abs_tol=1e-9) else abs(own - self.value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def evidence_blocks(evidence: dict[str, Any], skip: tuple[str, ...] = (), max_rows: int = MAX_ROWS,
                    max_values: int = MAX_VALUES, finding: Mapping[str, Any] | None = None) -> list[Block]:
    """The blocks of ``evidence`` in key order, minus the keys in ``skip``; scalars first; tables cut after
    ``max_rows`` rows (keeping those that name what ``finding`` judged, see :class:`Focus`) and lists after
    ``max_values`` values."""
    focus = Focus.of(finding)
    blocks: list[Block] = []
    for key, value in evidence.items():
        if key not in skip:
            blocks.extend(_blocks(str(key), value, max_rows, max_values, focus))
    return sorted(blocks, key=lambda b: b.kind != "value")


def print_blocks(evidence: dict[str, Any], skip: tuple[str, ...] = (),
                 finding: Mapping[str, Any] | None = None) -> list[Block]:
    """:func:`evidence_blocks` for the PDF: shorter tables and lists."""
    return evidence_blocks(evidence, skip, PRINT_MAX_ROWS, PRINT_MAX_VALUES, finding)


def strongest_first(rows: Any, key: str = "score") -> Any:
    """Rows (dicts) ordered by decreasing ``|row[key]|`` when every row has a number there, else unchanged; input
    nodes (``layer`` ``input``: the region a circuit starts from, scored 0) come first whatever their score."""
    if not isinstance(rows, list) or not all(isinstance(row, dict) and _is_number(row.get(key)) for row in rows):
        return rows
    return sorted(rows, key=lambda row: (not _is_input(row), -abs(row[key])))


def _is_input(node: dict) -> bool:
    return node.get("layer") == "input" or str(node.get("id", "")).startswith("input:")


def _kept(judged: list[bool], most: int, most_judged: int | None = None) -> list[int]:
    """The positions of the first ``most`` items, except that judged items (the first ``most_judged`` of them, all
    where None) are kept in place of the last others."""
    if len(judged) <= most:
        return list(range(len(judged)))
    named = [i for i, hit in enumerate(judged) if hit][:min(most, most_judged or most)]
    chosen = set(named)
    others = [i for i in range(len(judged)) if i not in chosen][:most - len(named)]
    return sorted(named + others)


def _blocks(key: str, value: Any, max_rows: int, max_values: int, focus: Focus) -> list[Block]:
    if is_scalar(value):
        return [Block(key, "value", value)]
    if isinstance(value, dict) and all(is_scalar(v) for v in value.values()):
        return [Block(f"{key}.{k}", "value", v) for k, v in value.items()]
    if isinstance(value, list) and all(is_scalar(v) for v in value):
        # one judged value is enough (a list holding it many times keeps its first values too)
        positions = _kept([focus.is_judged(key, v) for v in value], max_values, 1)
        return [Block(key, "values", [value[i] for i in positions], more=len(value) - len(positions),
                      positions=positions)]
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        columns = list(dict.fromkeys(str(k) for row in value for k in row))
        ordered = focus.ordered(value)
        rows = [[ordered[i].get(c) for c in columns] for i in _kept([focus.names(r) for r in ordered], max_rows)]
        return [Block(key, "table", columns=columns, rows=rows, more=max(0, len(value) - max_rows))]
    return [Block(key, "json", value)]
