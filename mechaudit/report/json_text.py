"""JSON text that stays diffable and small: objects indented one key a line, a list of plain values on one line.

``json.dumps(indent=2)`` writes every number of a 32x32 matrix on its own line, which made half of a findings
file indentation. Here a list whose items are all scalars (numbers, strings, booleans, null) is written inline, so
a matrix reads one row a line and a diff still points at the row that changed; so is an object of scalars whose
line stays short (``{"low": 0.1, "high": 0.3}``). The values are exactly those of ``json.dumps`` (parsing either
text gives the same object).
"""

from __future__ import annotations

import json
from typing import Any

#: A flat object (only scalar values) whose one-line form is at most this long is written on one line.
SHORT = 100


def dumps(value: Any, indent: int = 2) -> str:
    """``value`` as JSON text (UTF-8 characters kept, NaN refused), laid out as the module docstring says."""
    return _write(value, indent, 0)


def _scalar(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def _flat(value: Any) -> bool:
    """A scalar, or an empty list or object: what may stand on a line with others."""
    return not isinstance(value, (dict, list, tuple)) or not value


def _key(key: Any) -> str:
    """A key as ``json.dumps`` writes it: strings as they are; numbers, booleans and None as their JSON text."""
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, (bool, int, float)):
        return _scalar(key)
    raise TypeError(f"keys must be str, int, float, bool or None, not {type(key).__name__}")


def _write(value: Any, indent: int, level: int) -> str:
    inner = " " * (indent * (level + 1))
    if isinstance(value, dict):
        if not value:
            return "{}"
        pairs = [f"{_scalar(_key(key))}: {_write(item, indent, level + 1)}" for key, item in value.items()]
        if all(_flat(item) for item in value.values()):
            line = "{" + ", ".join(pairs) + "}"
            if len(line) <= SHORT:
                return line
        items = (f"{inner}{pair}" for pair in pairs)
        return "{\n" + ",\n".join(items) + "\n" + " " * (indent * level) + "}"
    if isinstance(value, (list, tuple)):
        if all(_flat(item) for item in value):
            return "[" + ", ".join(_scalar(item) for item in value) + "]"
        items = (f"{inner}{_write(item, indent, level + 1)}" for item in value)
        return "[\n" + ",\n".join(items) + "\n" + " " * (indent * level) + "]"
    return _scalar(value)
