"""Waivers: known failures accepted in writing, with a justification, an approver and an expiry date.

A waiver file is TOML::

    [[waiver]]
    id = "W1"                            # optional; default W<n>, its position in the file
    rule = "L201"
    component = "input:watermark"        # optional: "*" or left out means every component of the rule;
                                         # a layer ("classifier.0") also covers its units ("classifier.0:u3")
    metric = "flip_rate"                 # optional: only the finding with this metric
    justification = "Accepted for the demo release; retraining tracked in #12."
    approver = "Jane Doe <jane@example.com>"
    expires = 2026-06-30                 # a TOML date or "YYYY-MM-DD"; valid through that day

A waiver applies to failing findings (status ``fail`` or ``error``) only. A waived finding keeps its status
and gains ``waiver`` (state ``active``); it no longer fails the gate, and every report shows it as waived. Once
``expires`` has passed, the waiver no longer waives: the finding fails as before and its ``waiver`` says
``expired``. A waiver that matches no failing finding is reported as unused, so stale waivers get removed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from .addresses import parse_address
from .errors import InputError
from .findings import AuditResult, Finding

ALL = "*"
_RULE_ID = re.compile(r"^[DLR]\d{3}$")
_KEYS = ("id", "rule", "component", "metric", "justification", "approver", "expires")
_REQUIRED = ("rule", "justification", "approver", "expires")


@dataclass(frozen=True)
class Waiver:
    id: str
    rule: str
    component: str
    justification: str
    approver: str
    expires: dt.date
    metric: str | None = None

    def covers(self, finding: Finding) -> bool:
        if finding.rule_id != self.rule or (self.metric is not None and finding.metric != self.metric):
            return False
        if self.component == ALL:
            return True
        location = finding.location
        return location is not None and self.component in (location.component, location.layer)

    def expired(self, today: dt.date) -> bool:
        return today > self.expires

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "rule": self.rule, "component": self.component, "metric": self.metric,
                "justification": self.justification, "approver": self.approver,
                "expires": self.expires.isoformat()}


@dataclass(frozen=True)
class WaiverFile:
    path: str
    sha256: str
    waivers: tuple[Waiver, ...]


def load_waivers(path: Path) -> WaiverFile:
    """Read and validate a waiver file; every problem is an :class:`InputError` naming the file and entry."""
    if not path.is_file():
        raise InputError(str(path), "waiver file not found" if not path.exists() else "is not a file")
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(str(path), "waiver file is not UTF-8 text") from None
    except OSError as exc:
        raise InputError(str(path), f"cannot be read ({exc.strerror})") from None
    return WaiverFile(str(path), hashlib.sha256(raw).hexdigest(), parse_waivers(text, str(path)))


def parse_waivers(text: str, where: str = "waivers") -> tuple[Waiver, ...]:
    """Parse the text of a waiver file: the waivers, or an :class:`InputError` (never another exception)."""
    try:
        raw = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, ValueError, RecursionError) as exc:
        message = "nested too deeply" if isinstance(exc, RecursionError) else \
            str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(where, f"not valid TOML ({message})") from None
    unknown = sorted(set(raw) - {"waiver"})
    if unknown:
        raise InputError(where, f"unknown key '{unknown[0]}' (a waiver file holds [[waiver]] tables)")
    entries = raw.get("waiver", [])
    if not isinstance(entries, list):
        raise InputError(f"{where} waiver", "must be an array of tables: write [[waiver]]")
    waivers = [_parse_entry(entry, index, f"{where} [[waiver]] #{index + 1}") for index, entry in enumerate(entries)]
    seen: set[str] = set()
    for waiver in waivers:
        if waiver.id in seen:
            raise InputError(f"{where} [[waiver]] {waiver.id}", "duplicate waiver id")
        seen.add(waiver.id)
    return tuple(waivers)


def _parse_entry(entry: Any, index: int, where: str) -> Waiver:
    if not isinstance(entry, dict):
        raise InputError(where, f"must be a table, not {type(entry).__name__}")
    unknown = sorted(set(entry) - set(_KEYS))
    if unknown:
        raise InputError(where, f"unknown key '{unknown[0]}' (allowed: {', '.join(_KEYS)})")
    missing = [key for key in _REQUIRED if key not in entry]
    if missing:
        raise InputError(where, f"missing key '{missing[0]}' (a waiver needs {', '.join(_REQUIRED)})")
    values = {key: _text(entry[key], f"{where}.{key}") for key in _KEYS if key in entry and key != "expires"}
    if not _RULE_ID.match(values["rule"]):
        raise InputError(f"{where}.rule", f"'{values['rule']}' is not a rule id (D, L or R followed by three digits)")
    component = values.get("component", ALL)
    if component != ALL:
        try:
            parse_address(component)
        except ValueError as exc:
            raise InputError(f"{where}.component", str(exc)) from None
    return Waiver(
        id=values.get("id", f"W{index + 1}"),
        rule=values["rule"],
        component=component,
        justification=values["justification"],
        approver=values["approver"],
        expires=_date(entry["expires"], f"{where}.expires"),
        metric=values.get("metric"),
    )


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InputError(where, f"must be a non-empty string, not {value!r}"[:200])
    return value.strip()


def _date(value: Any, where: str) -> dt.date:
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise InputError(where, f"must be a date (YYYY-MM-DD), not {value!r}"[:200])


def apply_waivers(result: AuditResult, waiver_file: WaiverFile, today: dt.date | None = None) -> AuditResult:
    """Mark the failing findings that a waiver covers, and record every waiver's state in ``result.waivers``.

    ``today`` (default: the local date) decides expiry; tests pass a fixed date.
    """
    today = today or dt.date.today()
    matches: dict[str, list[str]] = {waiver.id: [] for waiver in waiver_file.waivers}
    for finding in result.findings:
        if not finding.failing:
            continue
        covering = [w for w in waiver_file.waivers if w.covers(finding)]
        for waiver in covering:
            matches[waiver.id].append(finding.location.component if finding.location else "model")
        if covering:
            chosen = next((w for w in covering if not w.expired(today)), covering[0])
            finding.waiver = {**chosen.to_dict(), "state": "expired" if chosen.expired(today) else "active"}
    result.waivers = {
        "file": waiver_file.path,
        "sha256": waiver_file.sha256,
        "today": today.isoformat(),
        "waived": sum(f.waived for f in result.findings),
        "entries": [{**w.to_dict(), "expired": w.expired(today), "used": bool(matches[w.id]),
                     "matches": sorted(set(matches[w.id]))} for w in waiver_file.waivers],
    }
    return result


def describe_waiver(waiver: dict[str, Any]) -> str:
    """One line for people: ``waived by W1 (Jane Doe, until 2026-06-30): justification``."""
    if waiver.get("state") == "expired":
        return f"waiver {waiver['id']} expired on {waiver['expires']} ({waiver['approver']}): {waiver['justification']}"
    return f"waived by {waiver['id']} ({waiver['approver']}, until {waiver['expires']}): {waiver['justification']}"


def waiver_problems(waivers: dict[str, Any] | None) -> list[str]:
    """Lines about waivers that need attention: expired ones and unused ones."""
    lines = []
    for entry in (waivers or {}).get("entries", []):
        target = f"{entry['rule']} {entry['component']}" + (f" {entry['metric']}" if entry.get("metric") else "")
        if entry["expired"]:
            lines.append(f"waiver {entry['id']} ({target}) expired on {entry['expires']}: it no longer waives")
        if not entry["used"]:
            lines.append(f"waiver {entry['id']} ({target}) is unused: it matches no failing finding; remove it")
    return lines
