"""Rulebooks: TOML files that select rules and may override their severity and parameters.

A rule is defined once, beside its check (:mod:`mechaudit.checks`: id, name, default severity, parameters with their
defaults and docs, documentation). A rulebook holds:

* ``name``, ``description``;
* ``select``: the rules it holds, by id or prefix (default ``["ALL"]``);
* ``uncertain``: how a verdict whose confidence interval straddles its threshold gates: ``"point"`` (default) judges
  the point estimate and flags the finding uncertain; ``"fail"`` fails an uncertain pass (a release gate should not
  pass on a coin flip). See ``docs/findings-json.md``;
* ``[rules.ID]``: overrides of a rule it holds: ``severity``, ``opt_in``, ``uncertain`` (the rule's own gate for an
  uncertain verdict, e.g. where an interval's measured false-fail rate on controls is too high to gate on),
  ``note`` (a paragraph appended to the rule's "how it is measured", e.g. why a compliance rulebook sets what it
  sets) and ``[rules.ID.params]``;
* or a rule of its own: ``[rules.ID]`` with ``check`` (a registered check), and ``name``, ``severity`` and
  ``docs`` unless that check defines a rule to take them from.

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
from .checks.registry import CHECKS, DOC_SECTIONS, Check, RuleDefinition, RuleDocs, rule_definitions
from .errors import InputError
from .findings import FAMILIES, SEVERITIES
from .resources import builtin_rulebooks, rulebook_path
from .spec import read_toml

__all__ = ["DOC_SECTIONS", "RULE_ID", "Rule", "RuleDocs", "Rulebook", "load_rulebook", "parse_params"]

RULE_ID = re.compile(r"^[DLR]\d{3}$")
UNCERTAIN = ("point", "fail")
_OVERRIDES = {"severity", "params", "opt_in", "note", "uncertain"}


@dataclass(frozen=True)
class Rule:
    id: str
    name: str
    check: Check
    severity: str
    params: Any
    docs: RuleDocs
    #: An opt-in rule runs only when a selector covers it explicitly (its id or any prefix of it, as in ruff: ``D``,
    #: ``D10``, ``D103``, or ``ALL``), not under the default selection (no ``select``: every other rule).
    opt_in: bool = False
    #: The rulebook's gate for an uncertain verdict (``point`` or ``fail``; see the module docs).
    uncertain: str = "point"

    @property
    def family(self) -> str:
        return FAMILIES[self.id[0]]

    def params_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.params)

    def parameters(self) -> list[dict[str, Any]]:
        """Each parameter: ``name``, effective ``value``, the check's ``default``, its one-line ``doc`` and its
        ``low``/``high`` range or ``choices`` (as ``mechaudit explain`` prints them)."""
        return [{"name": f.name, "value": getattr(self.params, f.name), "default": f.default, **f.metadata}
                for f in dataclasses.fields(self.params)]

    def describe(self) -> dict[str, Any]:
        """The rule as plain data, as `mechaudit rules --format json` and the result's metadata show it."""
        docs = {**dataclasses.asdict(self.docs), "references": list(self.docs.references)}
        return {"id": self.id, "name": self.name, "family": self.family, "check": self.check.name,
                "severity": self.severity, "needs": list(self.check.needs), "params": self.params_dict(),
                "opt_in": self.opt_in, "uncertain": self.uncertain, "docs": docs}


@dataclass(frozen=True)
class Rulebook:
    name: str
    description: str
    rules: dict[str, Rule]
    sha256: str
    path: Path

    def select(self, select: tuple[str, ...] = (), ignore: tuple[str, ...] = (),
               extend_select: tuple[str, ...] = ()) -> list[Rule]:
        """Rules chosen by id or prefix, as in ruff: ``select`` (default: every rule that is not opt-in) plus
        ``extend_select``, minus ``ignore``. An explicit selector chooses every rule it covers, opt-in or not."""
        unmatched = _unmatched((*select, *ignore, *extend_select), self.rules)
        if unmatched is not None:
            raise InputError(f"rule selector '{unmatched}'", f"matches no rule in rulebook '{self.name}'")
        chosen = [r for r in self.rules.values()
                  if (_matches(r.id, select) if select else not r.opt_in) or _matches(r.id, extend_select)]
        return [r for r in chosen if not _matches(r.id, ignore)]


def _unmatched(selectors: tuple[str, ...] | list[str], rule_ids) -> str | None:
    """The first selector (an id or prefix; ``ALL`` matches everything) that matches none of ``rule_ids``."""
    return next((s for s in selectors if s != "ALL" and not any(r.startswith(s) for r in rule_ids)), None)


def _matches(rule_id: str, selectors: tuple[str, ...]) -> bool:
    return any(s == "ALL" or rule_id.startswith(s) for s in selectors)


def allowed_values(parameter: dict[str, Any]) -> str:
    """A parameter's choices or range in words (``one of a, b``, ``0.0..1.0``, ``2..``), or "" when unbounded."""
    if parameter.get("choices"):
        return f"one of {', '.join(parameter['choices'])}"
    low, high = parameter.get("low"), parameter.get("high")
    if low is None and high is None:
        return ""
    return f"{'' if low is None else low}..{'' if high is None else high}"


def markdown_table(rules: list[Rule]) -> str:
    """The rules as the README's Markdown table (``mechaudit rules --format markdown``), from their definitions."""
    rows = ["| id | name | severity | what it flags |", "| --- | --- | --- | --- |"]
    for rule in rules:
        summary = rule.docs.summary.replace("|", "\\|") + (" *(opt-in)*" if rule.opt_in else "")
        rows.append(f"| {rule.id} | {rule.name} | {rule.severity} | {summary} |")
    return "\n".join(rows)


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
    _only(raw, {"name", "description", "select", "rules", "uncertain"}, where)
    uncertain = _string(raw.get("uncertain", "point"), f"{where} uncertain")
    if uncertain not in UNCERTAIN:
        raise InputError(f"{where} uncertain", f"'{uncertain}' is not one of {', '.join(UNCERTAIN)}")
    tables = raw.get("rules", {})
    if not isinstance(tables, dict):
        raise InputError(f"{where} rules", "must be a table of [rules.<ID>] tables")
    select = _strings(raw.get("select", ["ALL"]), f"{where} select")
    defined = rule_definitions()
    for rule_id in tables:
        if not RULE_ID.match(rule_id):
            raise InputError(f"{where} [rules.{rule_id}]", f"rule id '{rule_id}' must be D, L or R followed by three "
                                                           "digits")
    known = set(defined) | set(tables)
    unmatched = _unmatched(select, known)
    if unmatched is not None:
        raise InputError(f"{where} select", f"'{unmatched}' matches no rule")
    rules = {}
    for rule_id in sorted(known):
        table, at = tables.get(rule_id, {}), f"{where} [rules.{rule_id}]"
        if rule_id in defined:
            if not _matches(rule_id, tuple(select)):
                if rule_id in tables:
                    raise InputError(at, "overrides a rule that the rulebook's `select` leaves out")
                continue
            rules[rule_id] = _defined_rule(*defined[rule_id], table, at)
        else:
            rules[rule_id] = _declared_rule(rule_id, table, at)
        rules[rule_id] = dataclasses.replace(rules[rule_id], uncertain=_uncertain(table, uncertain, at))
    if not rules:
        raise InputError(where, "holds no rule")
    return Rulebook(
        name=_string(raw.get("name", path.stem), f"{where} name"),
        description=_string(raw.get("description", ""), f"{where} description"),
        rules=rules,
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        path=path,
    )


def _uncertain(table: Any, default: str, where: str) -> str:
    """A rule's gate for an uncertain verdict: its table's ``uncertain``, else the rulebook's."""
    value = _string(table.get("uncertain", default), f"{where}.uncertain") if isinstance(table, dict) else default
    if value not in UNCERTAIN:
        raise InputError(f"{where}.uncertain", f"'{value}' is not one of {', '.join(UNCERTAIN)}")
    return value


def _defined_rule(check: Check, definition: RuleDefinition, table: Any, where: str) -> Rule:
    """A rule defined by its check, with the rulebook's overrides (``table``)."""
    _only(table, _OVERRIDES, where, hint=f"rule {definition.id} is defined by check '{check.name}'; a rulebook may "
                                         "override its severity, opt_in, uncertain, note and params")
    return _rule(definition.id, definition.name, check, definition.docs, definition.severity, definition.opt_in,
                 table, where)


def _declared_rule(rule_id: str, table: Any, where: str) -> Rule:
    """A rule the rulebook declares itself: a registered check under an id of its own."""
    _only(table, _OVERRIDES | {"name", "check", "docs"}, where)
    if "check" not in table:
        raise InputError(where, "missing key 'check' (the rule is not defined by a check: say which check it runs)")
    check_name = _string(table["check"], f"{where}.check")
    if check_name not in CHECKS:
        raise InputError(f"{where}.check", f"unknown check '{check_name}' (known: {', '.join(sorted(CHECKS))})")
    check = CHECKS[check_name]
    base = check.rule
    for key in ("name", "severity", "docs"):
        if key not in table and base is None:
            raise InputError(where, f"missing key '{key}'")
    name = _string(table["name"], f"{where}.name") if "name" in table else base.name
    docs = _parse_docs(table["docs"], f"{where}.docs") if "docs" in table else base.docs
    severity = table["severity"] if base is None else base.severity  # without a base the table must give one
    return _rule(rule_id, name, check, docs, severity, base.opt_in if base else False, table, where)


def _rule(rule_id: str, name: str, check: Check, docs: RuleDocs, severity: str, opt_in: bool, table: dict,
          where: str) -> Rule:
    if "severity" in table:
        severity = _string(table["severity"], f"{where}.severity")
        if severity not in SEVERITIES:
            raise InputError(f"{where}.severity", f"'{severity}' is not one of {', '.join(SEVERITIES)}")
    if "note" in table:
        docs = dataclasses.replace(docs, how=f"{docs.how}\n{_string(table['note'], f'{where}.note').strip()}")
    return Rule(
        id=rule_id,
        name=name,
        check=check,
        severity=severity,
        params=parse_params(check.params, table.get("params", {}), f"{where}.params"),
        docs=docs,
        opt_in=_flag(table.get("opt_in", opt_in), f"{where}.opt_in"),
    )


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise InputError(where, f"must be true or false, not {value!r}")
    return value


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(where, "must be a list of rule ids or prefixes")
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
    return RuleDocs(*(_string(table[s], f"{where}.{s}") for s in DOC_SECTIONS[:-1]), tuple(refs))


def _only(table: Any, allowed: set[str], where: str, hint: str = "") -> None:
    if not isinstance(table, dict):
        raise InputError(where, f"must be a table, not {type(table).__name__}")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise InputError(where, f"unknown key '{unknown[0]}' ({hint or 'allowed: ' + ', '.join(sorted(allowed))})")


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise InputError(where, f"must be a string, not {type(value).__name__}")
    return value
