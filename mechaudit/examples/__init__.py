"""Embedded examples: models with a planted mechanism and their controls, audited with ``--example NAME``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

_HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Example:
    name: str
    spec: Path
    description: str


EXAMPLES: dict[str, Example] = {
    example.name: example
    for example in (
        Example("digits", _HERE / "digits" / "digits.toml",
                "CNN on scikit-learn digits with a planted watermark shortcut (class 7); fails L201."),
        Example("digits-control", _HERE / "digits" / "digits-control.toml",
                "The same CNN trained on the same data without the shortcut; passes every rule."),
        Example("induction", _HERE / "induction" / "induction.toml",
                "2-layer attention-only transformer with a planted induction circuit (heads blocks.0.attn:h2, "
                "blocks.1.attn:h3); R304 warns that each is a single point of failure."),
        Example("induction-control", _HERE / "induction" / "induction-control.toml",
                "The same transformer trained on random tokens (no repeats): no induction head; passes every rule."),
    )
}


def example_spec(name: str) -> Path:
    if name not in EXAMPLES:
        raise InputError(f"--example {name}", f"no such example (available: {', '.join(EXAMPLES)})")
    return EXAMPLES[name].spec
