"""Any finding's evidence, shaped for generic rendering: scalars, lists of values, tables, and raw JSON.

Rules added later need no template of their own: a list of dicts becomes a table, a dict of scalars becomes
rows of the measurement table, a list of scalars a short list. Long lists are cut, saying how many items are
left out (all of them are in ``findings.json``).
"""

from __future__ import annotations

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


def is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def evidence_blocks(evidence: dict[str, Any], skip: tuple[str, ...] = (), max_rows: int = MAX_ROWS,
                    max_values: int = MAX_VALUES) -> list[Block]:
    """The blocks of ``evidence`` in key order, minus the keys in ``skip``; scalars first; tables cut after
    ``max_rows`` rows and lists after ``max_values`` values."""
    blocks: list[Block] = []
    for key, value in evidence.items():
        if key not in skip:
            blocks.extend(_blocks(str(key), value, max_rows, max_values))
    return sorted(blocks, key=lambda b: b.kind != "value")


def print_blocks(evidence: dict[str, Any], skip: tuple[str, ...] = ()) -> list[Block]:
    """:func:`evidence_blocks` for the PDF: shorter tables and lists."""
    return evidence_blocks(evidence, skip, PRINT_MAX_ROWS, PRINT_MAX_VALUES)


def strongest_first(rows: Any, key: str = "score") -> Any:
    """Rows (dicts) ordered by decreasing ``|row[key]|`` when every row has a number there, else unchanged."""
    if not isinstance(rows, list) or not all(isinstance(row, dict) and isinstance(row.get(key), (int, float))
                                             and not isinstance(row.get(key), bool) for row in rows):
        return rows
    return sorted(rows, key=lambda row: -abs(row[key]))


def _blocks(key: str, value: Any, max_rows: int, max_values: int) -> list[Block]:
    if is_scalar(value):
        return [Block(key, "value", value)]
    if isinstance(value, dict) and all(is_scalar(v) for v in value.values()):
        return [Block(f"{key}.{k}", "value", v) for k, v in value.items()]
    if isinstance(value, list) and all(is_scalar(v) for v in value):
        return [Block(key, "values", value[:max_values], more=max(0, len(value) - max_values))]
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        columns = list(dict.fromkeys(str(k) for row in value for k in row))
        rows = [[row.get(c) for c in columns] for row in value[:max_rows]]
        return [Block(key, "table", columns=columns, rows=rows, more=max(0, len(value) - max_rows))]
    return [Block(key, "json", value)]
