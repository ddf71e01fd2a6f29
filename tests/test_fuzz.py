"""Property-based tests: any spec or rulebook text gives a result or a clean InputError, nothing else."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mechaudit.errors import InputError
from mechaudit.rulebook import load_rulebook
from mechaudit.spec import load_spec

KEYS = ["model", "data", "task", "audit", "scope", "factory", "weights", "file", "inputs", "labels", "masks",
        "kind", "class_names", "seed", "select", "fail-on", "pickle", "torchscript", "rules", "D101", "check",
        "severity", "params", "docs", "name", "max_dead_fraction", "references", "summary", "what", "why",
        "how", "fix", "key", "factory_args", "batch-size", "device", "pairs", "clean", "corrupted"]
SCALARS = st.one_of(st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=True), st.text(max_size=12),
                    st.sampled_from(["a:b", "data.npz", "../x", "classification", "dead_units", "warning", "D"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)),
                      max_leaves=12)
DOCUMENTS = st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=6)


def to_toml(document: dict) -> str:
    """Serialise with inline tables only; ``tomllib`` has no writer and this keeps the fuzzer independent."""
    def value(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, float):
            return "nan" if v != v else ("inf" if v == float("inf") else "-inf" if v == float("-inf") else repr(v))
        if isinstance(v, int):
            return str(v)
        if isinstance(v, str):
            return '"' + v.encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return "{" + ", ".join(f'"{k}" = {value(x)}' for k, x in v.items()) + "}"
    return "".join(f'"{k}" = {value(v)}\n' for k, v in document.items())


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _parse(text: str, parser) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "input.toml"
        path.write_text(text, encoding="utf-8")
        try:
            parser(path)
        except InputError as exc:
            assert str(exc) and "\n" not in str(exc).strip()


@FUZZ
@given(DOCUMENTS)
def test_spec_parser_structured(document: dict) -> None:
    _parse(to_toml(document), load_spec)


@FUZZ
@given(st.text(max_size=200))
def test_spec_parser_any_text(text: str) -> None:
    _parse(text, load_spec)


@FUZZ
@given(DOCUMENTS)
def test_rulebook_parser_structured(document: dict) -> None:
    _parse(to_toml(document), lambda p: load_rulebook(str(p)))


@FUZZ
@given(st.dictionaries(st.sampled_from(["name", "check", "severity", "params", "docs", "extra"]), VALUES, max_size=5))
def test_rulebook_rule_tables(rule: dict) -> None:
    _parse(to_toml({"rules": {"D101": rule}}), lambda p: load_rulebook(str(p)))
