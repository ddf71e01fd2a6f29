"""Compare two audit results: what is new, resolved or changed since a baseline, and which metrics regressed.

Findings are matched by ``(rule_id, component, metric)``. Every metric mechaudit measures today is *lower is
better* (a finding fails when ``value > threshold``), so a **regression** is a metric that rose by more than its
tolerance (absolute, in the metric's own units; default 0), whether or not it crossed its threshold.
The diff **fails** (``mechaudit diff`` exits 1) on a new failing finding (one that fails the gate now and did
not before: new, or newly failing, or no longer waived) or on a regression.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

from .config import tolerance_for
from .errors import InputError
from .findings import SEVERITIES, STATUSES, severity_rank

CATEGORIES = ("new", "resolved", "changed", "removed")


def load_result(path: Path) -> dict[str, Any]:
    """A ``findings.json``, or the one in a bundle directory (checked against its ``manifest.json``)."""
    file = path / "findings.json" if path.is_dir() else path
    if not file.is_file():
        raise InputError(str(path), "not a findings.json file or a bundle directory holding one")
    try:
        raw = file.read_bytes()
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(str(file), f"not valid JSON ({str(exc).splitlines()[0]})") from None
    except RecursionError:
        raise InputError(str(file), "not valid JSON (nested too deeply)") from None
    except OSError as exc:
        raise InputError(str(file), f"cannot be read ({exc.strerror})") from None
    _check_shape(data, str(file))
    manifest = file.parent / "manifest.json"
    if manifest.is_file():
        try:
            recorded = json.loads(manifest.read_text(encoding="utf-8")).get("files", {}).get(file.name)
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError, RecursionError):
            raise InputError(str(manifest), "not a valid manifest.json") from None
        if recorded is not None and recorded != hashlib.sha256(raw).hexdigest():
            raise InputError(str(file), f"does not match the SHA-256 recorded in {manifest}: the bundle was altered")
    return data


def _check_shape(data: Any, where: str) -> None:
    if not isinstance(data, dict) or not isinstance(data.get("findings"), list):
        raise InputError(where, "not a mechaudit findings.json (no 'findings' list)")
    version = str(data.get("schema_version", ""))
    if not version.startswith("1."):
        raise InputError(where, f"schema_version '{version}' is not supported (expected 1.x)")
    for index, finding in enumerate(data["findings"]):
        here = f"{where}: findings[{index}]"
        if not isinstance(finding, dict) or not isinstance(finding.get("rule_id"), str):
            raise InputError(here, "is not a finding with a rule_id")
        if finding.get("status") not in STATUSES or finding.get("severity") not in SEVERITIES:
            raise InputError(here, "has an unknown status or severity")
        location = finding.get("location")
        if location is not None and not (isinstance(location, dict) and isinstance(location.get("component"), str)):
            raise InputError(here, "has a malformed location")
        if finding.get("metric") is not None and not isinstance(finding["metric"], str):
            raise InputError(here, "'metric' is not a string")
        if finding.get("waiver") is not None and not isinstance(finding["waiver"], dict):
            raise InputError(here, "'waiver' is not an object")
        for key in ("value", "threshold"):
            if finding.get(key) is not None and (isinstance(finding[key], bool)
                                                 or not isinstance(finding[key], (int, float))):
                raise InputError(here, f"'{key}' is not a number")


def finding_key(finding: dict[str, Any]) -> tuple[str, str, str]:
    location = finding.get("location") or {}
    return finding["rule_id"], location.get("component") or "", finding.get("metric") or ""


def _keyed(findings: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    """Findings by key; a key seen twice (it should not be) gets an occurrence number so neither is lost."""
    seen: Counter = Counter()
    keyed = {}
    for finding in findings:
        key = finding_key(finding)
        seen[key] += 1
        keyed[key if seen[key] == 1 else (*key, seen[key])] = finding
    return keyed


def _waived(finding: dict[str, Any]) -> bool:
    return (finding.get("waiver") or {}).get("state") == "active"


def _gates(finding: dict[str, Any] | None, fail_on: str) -> bool:
    if finding is None or fail_on == "never" or _waived(finding):
        return False
    return finding["status"] == "error" or (
        finding["status"] == "fail" and severity_rank(finding["severity"]) >= severity_rank(fail_on))


def _failing(finding: dict[str, Any] | None) -> bool:
    return finding is not None and finding["status"] in ("fail", "error") and not _waived(finding)


def _side(finding: dict[str, Any] | None) -> dict[str, Any] | None:
    if finding is None:
        return None
    return {"status": finding["status"], "severity": finding["severity"], "value": finding.get("value"),
            "threshold": finding.get("threshold"), "waived": _waived(finding), "message": finding.get("message", "")}


def diff_results(old: dict[str, Any], new: dict[str, Any], tolerance: dict[str, float] | None = None,
                 fail_on: str | None = None, old_label: str = "baseline", new_label: str = "current") -> dict:
    """The differences from ``old`` to ``new`` (two findings.json contents) as plain data (see module doc)."""
    tolerance = dict(tolerance or {})
    fail_on = fail_on or new.get("fail_on", "error")
    before, after = _keyed(old["findings"]), _keyed(new["findings"])
    categories: dict[str, list[dict[str, Any]]] = {name: [] for name in CATEGORIES}
    regressions, new_failures = [], []
    unchanged = 0
    for key in [*after, *(k for k in before if k not in after)]:
        was, now = before.get(key), after.get(key)
        entry = {"rule_id": key[0], "component": key[1] or None, "metric": key[2] or None,
                 "old": _side(was), "new": _side(now), "delta": None}
        if was is not None and now is not None and _number(was.get("value")) and _number(now.get("value")):
            entry["delta"] = round(now["value"] - was["value"], 6)
        if _gates(now, fail_on) and not _gates(was, fail_on):
            new_failures.append(entry)
        limit = tolerance_for(tolerance, entry["metric"])
        if entry["delta"] is not None and entry["delta"] > limit + 1e-12:
            regressions.append({**entry, "tolerance": limit})
        if was is None:
            categories["new"].append(entry)
        elif now is None:
            categories["resolved" if _failing(was) else "removed"].append(entry)
        elif _failing(was) and now["status"] == "pass":
            categories["resolved"].append(entry)
        elif _essentials(entry["old"]) != _essentials(entry["new"]):
            categories["changed"].append(entry)
        else:
            unchanged += 1
    failed = bool(new_failures or regressions)
    return {
        "baseline": _identity(old, old_label),
        "current": _identity(new, new_label),
        "fail_on": fail_on,
        "tolerance": {"default": tolerance.get("default", 0.0), **tolerance},
        "summary": {**{name: len(items) for name, items in categories.items()}, "unchanged": unchanged,
                    "new_failures": len(new_failures), "regressions": len(regressions)},
        **categories,
        "new_failures": new_failures,
        "regressions": regressions,
        "verdict": "fail" if failed else "pass",
    }


def _essentials(side: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in side.items() if k != "message"}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _identity(result: dict[str, Any], label: str) -> dict[str, Any]:
    meta = result.get("metadata") or {}
    return {"label": label, "verdict": result.get("verdict"), "model": (meta.get("model") or {}).get("name"),
            "model_sha256": (meta.get("model") or {}).get("sha256", {}),
            "rulebook": (meta.get("rulebook") or {}).get("name"), "started_at": meta.get("started_at")}


def _where(entry: dict[str, Any]) -> str:
    return " ".join(p for p in (entry["rule_id"], entry["component"] or "model", entry["metric"]) if p)


def _state(side: dict[str, Any] | None) -> str:
    if side is None:
        return "absent"
    value = "" if side["value"] is None else f" {side['value']:.4g}"
    return f"{side['status']}{' (waived)' if side['waived'] else ''}{value}"


def diff_lines(diff: dict[str, Any]) -> list[str]:
    """The diff for people, one line per change, then a verdict line."""
    lines = [(f"mechaudit diff: {diff['baseline']['label']} ({diff['baseline']['verdict']}) -> "
              f"{diff['current']['label']} ({diff['current']['verdict']})")]
    for entry in diff["new_failures"]:
        lines.append(f"  NEW FAILURE  {_where(entry)}: {_state(entry['old'])} -> {_state(entry['new'])}"
                     + (f" (threshold {entry['new']['threshold']:.4g})" if _number(entry['new']['threshold']) else ""))
    for entry in diff["regressions"]:
        lines.append(f"  REGRESSION   {_where(entry)}: {entry['old']['value']:.4g} -> {entry['new']['value']:.4g} "
                     f"(+{entry['delta']:.4g}, tolerance {entry['tolerance']:.4g})")
    for name in CATEGORIES:
        for entry in diff[name]:
            lines.append(f"  {name:<12} {_where(entry)}: {_state(entry['old'])} -> {_state(entry['new'])}")
    drift = diff.get("representation_drift") or {}
    if drift.get("error"):
        lines.append(f"  drift        not compared: {drift['error']}")
    for row in drift.get("layers", []):
        lines.append(f"  drift        {row['layer']}: linear CKA {row['cka']:.3f}, RSA {row['rsa']:.3f} with "
                     f"{row['baseline_layer']} (D107 fingerprints)")
    summary = diff["summary"]
    counts = ", ".join(f"{summary[name]} {name}" for name in (*CATEGORIES, "unchanged"))
    if diff["verdict"] == "fail":
        lines.append(f"FAIL: {summary['new_failures']} new failing finding(s), {summary['regressions']} metric "
                     f"regression(s) beyond the tolerance; {counts}")
    else:
        lines.append(f"PASS: no new failing finding, no metric regression beyond the tolerance; {counts}")
    return lines


def render_diff_html(diff: dict[str, Any]) -> str:
    """A standalone HTML page holding the report's "changes since the baseline" section."""
    from .report.html_report import environment

    return environment().get_template("diff.html.j2").render(diff=diff)
