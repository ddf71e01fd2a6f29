"""Component addresses, the names a user types: one parser and one formatter for every place that reads them.

* ``features.3`` — a layer (its module path);
* ``features.3:ch17`` — one unit of it: ``u`` (Linear unit), ``ch`` (Conv channel), ``h`` (attention head),
  ``d`` (residual-stream dimension);
* ``classifier.0:feat12`` — one learned dictionary feature of a layer (D103);
* ``input:watermark`` — a declared input region (``input`` alone: the whole input).

Waivers, ``mechaudit edit``, the API and the findings all use :func:`parse_address` and :func:`format_address`, so
an address reads the same in the CLI, JSON, SARIF, HTML and PDF.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: The unit prefix of each layer kind.
UNIT_PREFIXES: dict[str, str] = {"linear": "u", "conv": "ch", "heads": "h", "stream": "d"}
FEATURE_PREFIX = "feat"
INPUT = "input"

_PREFIXES = (*UNIT_PREFIXES.values(), FEATURE_PREFIX)
_ADDRESS = re.compile(rf"^(?P<layer>[^:\s]+)(?::(?P<prefix>{'|'.join(_PREFIXES)})(?P<index>\d+))?$")


@dataclass(frozen=True)
class Address:
    """A parsed address: a layer, optionally one unit or feature of it (``prefix`` + ``index``), or an input
    region (``layer`` is ``input``, ``region`` its name or None for the whole input)."""

    layer: str
    prefix: str | None = None
    index: int | None = None
    region: str | None = None

    @property
    def is_input(self) -> bool:
        return self.layer == INPUT

    @property
    def unit(self) -> str | None:
        """The unit part (``ch17``), or None for a whole layer or an input region."""
        return None if self.prefix is None else f"{self.prefix}{self.index}"

    def __str__(self) -> str:
        if self.is_input:
            return input_address(self.region)
        return self.layer if self.prefix is None else format_address(self.layer, self.prefix, self.index)


def format_address(layer: str, prefix: str, index: int) -> str:
    """``features.3:ch17`` from (``features.3``, ``ch``, 17)."""
    return f"{layer}:{prefix}{index}"


def input_address(region: str | None = None) -> str:
    """``input:NAME`` for a declared input region, ``input`` for the whole input."""
    return INPUT if region is None else f"{INPUT}:{region}"


def parse_address(text: str) -> Address:
    """Parse an address; raises ``ValueError`` (saying which forms exist) when ``text`` is not one."""
    if text == INPUT or text.startswith(f"{INPUT}:"):
        region = text[len(INPUT) + 1:] or None if text != INPUT else None
        if text != INPUT and region is None:
            raise ValueError(f"'{text}' names no input region (input:NAME)")
        return Address(INPUT, region=region)
    match = _ADDRESS.match(text)
    if not match:
        raise ValueError(f"'{text}' is not an address (layer, layer:uN, layer:chN, layer:hN, layer:dN, layer:featN "
                         "or input:NAME)")
    index = match["index"]
    return Address(match["layer"], match["prefix"], None if index is None else int(index))
