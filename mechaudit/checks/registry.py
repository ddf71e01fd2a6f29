"""Checks are registered by name; a rulebook refers to them by that name."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..needs import NEEDS


def param(default: Any, *, low: float | None = None, high: float | None = None,
          choices: tuple[str, ...] | None = None, doc: str = "") -> Any:
    """A check parameter with its default, allowed range or choices, and a one-line description."""
    return dataclasses.field(default=default, metadata={"low": low, "high": high, "choices": choices, "doc": doc})


@dataclass(frozen=True)
class Check:
    """A check: the function that runs it, its parameter dataclass and what it needs from the model and data."""

    name: str
    run: Callable[..., list]
    params: type
    needs: tuple[str, ...]


CHECKS: dict[str, Check] = {}


def register(name: str, params: type, needs: tuple[str, ...] = ()) -> Callable:
    """Decorator: ``@register("dead_units", DeadUnitsParams, needs=("layers",))``."""
    unknown = set(needs) - set(NEEDS)
    if unknown:
        raise ValueError(f"check {name}: unknown needs {sorted(unknown)}")

    def decorate(run: Callable) -> Callable:
        CHECKS[name] = Check(name, run, params, needs)
        return run
    return decorate

