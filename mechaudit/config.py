"""Configuration beyond the plain options: per-rule overrides, regression tolerances, the effective rulebook.

Options come from, in rising precedence: defaults, ``[tool.mechaudit]`` in the nearest ``pyproject.toml``, the
spec's ``[audit]``, the command line (see :mod:`mechaudit.spec`). Two option tables merge over the lower levels
instead of replacing them:

- ``rules``: per-rule overrides, ``[tool.mechaudit.rules.L201]`` / ``[audit.rules.L201]``, holding parameter keys
  of the rule's check and ``severity``. They are validated against the rule's check exactly like a rulebook
  (:func:`mechaudit.rulebook.parse_params`) once the rulebook is known, and name the file they came from.
- ``tolerance``: how far a metric may rise against a baseline before ``mechaudit diff`` calls it a regression:
  a number (every metric) or a table ``{flip_rate = 0.02, default = 0.0}``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from .errors import InputError
from .findings import SEVERITIES
from .spec import Options, load_spec, pyproject_options, read_toml, tool_options

RULE_OVERRIDE_EXTRA = ("severity",)


def merge_option(key: str, value: Any, where: str, base: Any) -> Any:
    """Merge the option table ``key`` (``rules`` or ``tolerance``) read at ``where`` over ``base``."""
    if key == "rules":
        return tuple(base) + parse_rule_overrides(value, where)
    if key == "tolerance":
        return tuple(sorted({**dict(base), **parse_tolerance(value, where)}.items()))
    raise KeyError(key)


def parse_rule_overrides(table: Any, where: str) -> tuple[tuple[str, str, dict[str, Any]], ...]:
    """``{L201: {max_flip_rate: 0.02, severity: "error"}}`` -> ``((rule_id, where, table), ...)``.

    The shape and ``severity`` are checked here; parameter keys once the rulebook is known (:func:`apply_overrides`).
    """
    from .rulebook import RULE_ID

    if not isinstance(table, dict):
        raise InputError(where, f"must be a table of [rules.<ID>] tables, not {type(table).__name__}")
    overrides = []
    for rule_id, entry in table.items():
        here = f"{where}.{rule_id}"
        if not RULE_ID.match(rule_id):
            raise InputError(here, f"'{rule_id}' is not a rule id (D, L or R followed by three digits)")
        if not isinstance(entry, dict):
            raise InputError(here, f"must be a table of parameters and 'severity', not {type(entry).__name__}")
        if "severity" in entry and entry["severity"] not in SEVERITIES:
            raise InputError(f"{here}.severity", f"{entry['severity']!r} is not one of {', '.join(SEVERITIES)}")
        overrides.append((rule_id, here, dict(entry)))
    return tuple(overrides)


def apply_overrides(rulebook, overrides: tuple[tuple[str, str, dict[str, Any]], ...]):
    """The rulebook with each override applied in order (later ones win), every value validated."""
    from .rulebook import parse_params

    if not overrides:
        return rulebook
    rules = dict(rulebook.rules)
    for rule_id, where, table in overrides:
        rule = rules.get(rule_id)
        if rule is None:
            raise InputError(where, f"rule '{rule_id}' is not in rulebook '{rulebook.name}' "
                                    f"(it has: {', '.join(rules)})")
        params_table = {k: v for k, v in table.items() if k not in RULE_OVERRIDE_EXTRA}
        known = {f.name for f in dataclasses.fields(rule.check.params)} | set(RULE_OVERRIDE_EXTRA)
        unknown = sorted(set(table) - known)
        if unknown:
            raise InputError(where, f"unknown key '{unknown[0]}' (allowed: {', '.join(sorted(known))})")
        params = parse_params(rule.check.params, params_table, where, base=rule.params)
        rules[rule_id] = dataclasses.replace(rule, params=params, severity=table.get("severity", rule.severity))
    return dataclasses.replace(rulebook, rules=rules)


def override_summary(overrides: tuple[tuple[str, str, dict[str, Any]], ...]) -> dict[str, dict[str, Any]]:
    """``{rule_id: {key: value}}``: what the configuration changed, the last level winning (for the metadata)."""
    summary: dict[str, dict[str, Any]] = {}
    for rule_id, _where, table in overrides:
        summary.setdefault(rule_id, {}).update(table)
    return dict(sorted(summary.items()))


def override_sources(overrides: tuple[tuple[str, str, dict[str, Any]], ...]) -> dict[str, dict[str, str]]:
    """``{rule_id: {key: where}}``: which file and table set each overridden value."""
    sources: dict[str, dict[str, str]] = {}
    for rule_id, where, table in overrides:
        sources.setdefault(rule_id, {}).update({key: where for key in table})
    return sources


def parse_tolerance(value: Any, where: str) -> dict[str, float]:
    """A tolerance option: a number for every metric, or a table ``{metric: number, default: number}``."""
    table = value if isinstance(value, dict) else {"default": value}
    parsed = {}
    for metric, number in table.items():
        here = where if not isinstance(value, dict) else f"{where}.{metric}"
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise InputError(here, f"must be a number, not {type(number).__name__} ({number!r})")
        if not math.isfinite(number) or number < 0:
            raise InputError(here, f"must be a finite number >= 0, not {number}")
        parsed[str(metric)] = float(number)
    return parsed


def parse_tolerance_flag(text: str) -> dict[str, float]:
    """``--tolerance 0.02`` or ``--tolerance flip_rate=0.02,default=0.01``."""
    where = f"--tolerance {text}"
    if "=" not in text:
        return parse_tolerance(_number(text, where), where)
    table = {}
    for item in text.split(","):
        metric, sep, number = item.partition("=")
        if not sep or not metric.strip():
            raise InputError(where, "expected a number or METRIC=NUMBER[,METRIC=NUMBER...]")
        table[metric.strip()] = _number(number, where)
    return parse_tolerance(table, where)


def _number(text: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InputError(where, f"'{text.strip()}' is not a number") from None


def tolerance_for(tolerances: dict[str, float], metric: str | None) -> float:
    """The tolerance of one metric: its own entry, else ``default``, else 0."""
    return tolerances.get(metric or "", tolerances.get("default", 0.0))


def load_options(config: Path | None, cwd: Path | None = None) -> tuple[Options, str]:
    """The options in effect for ``config`` (a spec or a ``pyproject.toml``; None: the pyproject above ``cwd``),
    and a line saying where they came from."""
    cwd = cwd or Path.cwd()
    if config is None:
        found = next((d / "pyproject.toml" for d in (cwd, *cwd.parents) if (d / "pyproject.toml").is_file()), None)
        options = pyproject_options(cwd)
        table = read_toml(found).get("tool", {}).get("mechaudit") if found else None
        return options, f"{found} [tool.mechaudit]" if table is not None else "defaults"
    if not config.exists():
        raise InputError(str(config), "file not found")
    if config.name == "pyproject.toml":
        return pyproject_options(config.resolve().parent), f"{config} [tool.mechaudit]"
    base = pyproject_options(config.resolve().parent)  # the spec's own configuration, wherever we run from
    return load_spec(config, base).options, f"{config} [audit] over pyproject.toml"


def config_file_options(path: Path) -> Options:
    """``audit --config FILE``: the ``[tool.mechaudit]`` table of ``FILE`` (a pyproject.toml or any TOML file),
    used instead of the discovered pyproject.toml."""
    if not path.is_file():
        raise InputError(f"--config {path}", "file not found")
    table = read_toml(path).get("tool", {}).get("mechaudit")
    if table is None:
        raise InputError(f"--config {path}", "has no [tool.mechaudit] table")
    return tool_options(table, path)


def effective_rulebook(options: Options, rulebook: str | None = None):
    """The rulebook the options choose (or ``rulebook``), with their per-rule overrides applied."""
    from .rulebook import load_rulebook

    return apply_overrides(load_rulebook(rulebook or options.rulebook), options.rules)
