"""Rulebooks: TOML files that declare rules (id, check, severity, parameters, documentation).

A rulebook is validated completely when it is loaded: an unknown check, an unknown key, a wrongly typed or
out-of-range parameter is rejected with a message naming the rule and the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import checks  # noqa: F401  (registers the built-in checks)
from .checks.registry import CHECKS, Check
from .errors import InputError
from .findings import FAMILIES, SEVERITIES
from .resources import builtin_rulebooks, rulebook_path
from .spec import read_toml

RULE_ID = re.compile(r"^[DLR]\d{3}$")
DOC_SECTIONS = ("summary", "what", "why", "how", "fix", "references")


@dataclass(frozen=True)
class RuleDocs:
    summary: str
    what: str
    why: str
    how: str
    fix: str
    references: tuple[str, ...]


@dataclass(frozen=True)
class Rule:
    id: str
    name: str
    check: Check
    severity: str
    params: Any
    docs: RuleDocs
    #: An opt-in rule runs only when a selector names it explicitly (its id or a prefix of two characters or more,
    #: e.g. ``D10``), not under the default selection (all rules) nor a one-letter family prefix.
    opt_in: bool = False

    @property
    def family(self) -> str:
        return FAMILIES[self.id[0]]

    def params_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.params)

    def describe(self) -> dict[str, Any]:
        """The rule as plain data, as `mechaudit rules --format json` and the result's metadata show it."""
        docs = {**dataclasses.asdict(self.docs), "references": list(self.docs.references)}
        return {"id": self.id, "name": self.name, "family": self.family, "check": self.check.name,
                "severity": self.severity, "needs": list(self.check.needs), "params": self.params_dict(),
                "opt_in": self.opt_in, "docs": docs}


@dataclass(frozen=True)
class Rulebook:
    name: str
    description: str
    rules: dict[str, Rule]
    sha256: str
    path: Path

    def select(self, select: tuple[str, ...] = (), ignore: tuple[str, ...] = (),
               extend_select: tuple[str, ...] = ()) -> list[Rule]:
        """Rules chosen by id or prefix, as in ruff: ``select`` (default: all) plus ``extend_select``, minus
        ``ignore``."""
        for selector in (*select, *ignore, *extend_select):
            if selector != "ALL" and not any(rule_id.startswith(selector) for rule_id in self.rules):
                raise InputError(f"rule selector '{selector}'", f"matches no rule in rulebook '{self.name}'")
        chosen = [r for r in self.rules.values()
                  if _chooses(r, select or ("ALL",)) or _chooses(r, extend_select)]
        return [r for r in chosen if not _matches(r.id, ignore)]


def _chooses(rule: Rule, selectors: tuple[str, ...]) -> bool:
    """Whether ``selectors`` choose ``rule``: an opt-in rule needs a selector of two characters or more."""
    if rule.opt_in:
        return any(len(s) >= 2 and s != "ALL" and rule.id.startswith(s) for s in selectors)
    return _matches(rule.id, selectors)


def _matches(rule_id: str, selectors: tuple[str, ...]) -> bool:
    return any(s == "ALL" or rule_id.startswith(s) for s in selectors)


def load_rulebook(name_or_path: str) -> Rulebook:
    """Load a built-in rulebook by name (``default``) or any rulebook file by path."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        if name_or_path not in builtin_rulebooks():
            raise InputError(f"rulebook '{name_or_path}'", f"no such built-in rulebook "
                                                          f"(built-in: {', '.join(builtin_rulebooks())})")
        path = rulebook_path(name_or_path)
    raw = read_toml(path)
    where = str(path)
    _only(raw, {"name", "description", "rules"}, where)
    rules_table = raw.get("rules")
    if not isinstance(rules_table, dict) or not rules_table:
        raise InputError(where, "declares no [rules.<ID>] tables")
    rules = {rule_id: _parse_rule(rule_id, table, f"{where} [rules.{rule_id}]")
             for rule_id, table in rules_table.items()}
    return Rulebook(
        name=_string(raw.get("name", path.stem), f"{where} name"),
        description=_string(raw.get("description", ""), f"{where} description"),
        rules=dict(sorted(rules.items())),
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        path=path,
    )


def _parse_rule(rule_id: str, table: Any, where: str) -> Rule:
    if not RULE_ID.match(rule_id):
        raise InputError(where, f"rule id '{rule_id}' must be D, L or R followed by three digits")
    _only(table, {"name", "check", "severity", "params", "docs", "opt_in"}, where)
    for key in ("name", "check", "severity", "docs"):
        if key not in table:
            raise InputError(where, f"missing key '{key}'")
    check_name = _string(table["check"], f"{where}.check")
    if check_name not in CHECKS:
        raise InputError(f"{where}.check", f"unknown check '{check_name}' (known: {', '.join(sorted(CHECKS))})")
    severity = _string(table["severity"], f"{where}.severity")
    if severity not in SEVERITIES:
        raise InputError(f"{where}.severity", f"'{severity}' is not one of {', '.join(SEVERITIES)}")
    check = CHECKS[check_name]
    return Rule(
        id=rule_id,
        name=_string(table["name"], f"{where}.name"),
        check=check,
        severity=severity,
        params=parse_params(check.params, table.get("params", {}), f"{where}.params"),
        docs=_parse_docs(table["docs"], f"{where}.docs"),
        opt_in=_flag(table.get("opt_in", False), f"{where}.opt_in"),
    )


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise InputError(where, f"must be true or false, not {value!r}")
    return value


def parse_params(params_type: type, table: Any, where: str, base: Any = None) -> Any:
    """Validate a parameter table against a check's parameter dataclass (types, ranges, choices)."""
    _only(table, {f.name for f in dataclasses.fields(params_type)}, where)
    fields = {f.name: f for f in dataclasses.fields(params_type)}
    values = {}
    for key, value in table.items():
        spec = fields[key]
        expected = type(spec.default)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not expected:
            raise InputError(f"{where}.{key}", f"must be {expected.__name__}, not {type(value).__name__} ({value!r})")
        if isinstance(value, float) and not math.isfinite(value):  # nan passes every range check
            raise InputError(f"{where}.{key}", f"{value} is not a finite number")
        low, high, choices = spec.metadata.get("low"), spec.metadata.get("high"), spec.metadata.get("choices")
        if low is not None and value < low or high is not None and value > high:
            raise InputError(f"{where}.{key}", f"{value} is outside [{low}, {high}]")
        if choices is not None and value not in choices:
            raise InputError(f"{where}.{key}", f"'{value}' is not one of {', '.join(choices)}")
        values[key] = value
    return dataclasses.replace(base if base is not None else params_type(), **values)


def _parse_docs(table: Any, where: str) -> RuleDocs:
    _only(table, set(DOC_SECTIONS), where)
    missing = [s for s in DOC_SECTIONS if s not in table]
    if missing:
        raise InputError(where, f"missing documentation section '{missing[0]}'")
    refs = table["references"]
    if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
        raise InputError(f"{where}.references", "must be a non-empty list of strings")
    return RuleDocs(*(_string(table[s], f"{where}.{s}").strip() for s in DOC_SECTIONS[:-1]), tuple(refs))


def _only(table: Any, allowed: set[str], where: str) -> None:
    if not isinstance(table, dict):
        raise InputError(where, f"must be a table, not {type(table).__name__}")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise InputError(where, f"unknown key '{unknown[0]}' (allowed: {', '.join(sorted(allowed))})")


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise InputError(where, f"must be a string, not {type(value).__name__}")
    return value
