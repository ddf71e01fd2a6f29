"""SARIF 2.1.0 (``--format sarif`` -> ``findings.sarif``), for GitHub code scanning and other SARIF viewers.

- ``tool.driver.rules``: every selected rule, with its summary, what it checks, its documentation as markdown
  help and its (effective) severity as the default level.
- ``results``: the findings that did not pass (``fail`` and ``error``). Each points at a file of the user's
  repository (relative to ``%SRCROOT%``, the repository root: the nearest ancestor of the spec with ``.git`` or
  ``pyproject.toml``): the line of the model class that defines the layer, or the spec line that declares the
  input or enables the rule, else (a quick run without a spec) line 1 of the model or data file. Its logical
  location is the component address.
- Identity: GitHub code scanning tells alerts apart by ``partialFingerprints.primaryLocationLineHash``, which its
  upload action otherwise derives from the text of the result's line (``fingerprints.ts`` in codeql-action), so
  two heads or units reported at the same ``class Attention(`` line would merge into one alert. Each result
  therefore carries its own ``primaryLocationLineHash``: a hash of rule id, component address and metric (never
  line contents), in the action's ``<hex>:<n>`` shape; the action keeps a value it finds (it logs a notice that it
  differs from its own). The same hash is also under ``mechaudit/v1`` for other consumers.
- Waived findings are left out of ``results`` (GitHub is reported to open alerts for suppressed results) and
  counted in ``run.properties.waivedOmitted``; ``keep_waived`` (``--sarif-keep-waived``) keeps them with an
  accepted external ``suppression`` and the justification. An expired waiver is not a suppression, and the
  message says it expired. Skipped rules, rule errors, expired and unused waivers are
  ``toolExecutionNotifications`` of the invocation.
- ``fullDescription`` is at most 1,024 characters (GitHub's limit); the full documentation is in ``help``.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from ..findings import AuditResult
from .intervals import measured_suffix
from .json_report import result_to_dict

SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
INFORMATION_URI = "https://pypi.org/project/mechaudit/"
LEVELS = {"error": "error", "warning": "warning", "info": "note"}
FINGERPRINT = "mechaudit/v1"
LINE_HASH = "primaryLocationLineHash"
SRCROOT = "%SRCROOT%"
MAX_DESCRIPTION = 1024  # GitHub code scanning rejects longer rule descriptions


def fingerprint(rule_id: str, component: str | None, metric: str | None) -> str:
    """The stable identity of a finding: SHA-256 of rule id, component address and metric."""
    return hashlib.sha256(f"{rule_id}\x00{component or ''}\x00{metric or ''}".encode()).hexdigest()


def render_sarif(result: AuditResult, keep_waived: bool = False) -> str:
    return json.dumps(sarif_log(result_to_dict(result), keep_waived), indent=2, ensure_ascii=False) + "\n"


def sarif_log(data: dict[str, Any], keep_waived: bool = False) -> dict[str, Any]:
    """The SARIF log of one result (a ``findings.json`` content); waived findings only with ``keep_waived``."""
    meta = data["metadata"]
    declared = meta.get("rulebook", {}).get("rules") or {}
    rule_ids = sorted({*declared, *(f["rule_id"] for f in data["findings"]), *(r["id"] for r in data["rules"])})
    index = {rule_id: i for i, rule_id in enumerate(rule_ids)}
    severities = {f["rule_id"]: f["severity"] for f in data["findings"]}
    rules = [_descriptor(rule_id, declared.get(rule_id), severities.get(rule_id, "warning")) for rule_id in rule_ids]
    baseline = _baseline_states(data.get("baseline"))
    reported = [f for f in data["findings"] if f["status"] in ("fail", "error")]
    shown = [f for f in reported if keep_waived or (f.get("waiver") or {}).get("state") != "active"]
    results = [_result(f, index, meta.get("locations") or {}, baseline) for f in shown]
    run: dict[str, Any] = {
        "tool": {"driver": {"name": "mechaudit", "version": meta["tool"]["version"],
                            "semanticVersion": meta["tool"]["version"], "informationUri": INFORMATION_URI,
                            "rules": rules}},
        "originalUriBaseIds": {SRCROOT: {"description": {
            "text": "The repository root: the nearest ancestor of the audit spec holding .git or pyproject.toml."}}},
        "automationDetails": {"id": f"mechaudit/{_slug(meta['model']['name'])}/"},
        "invocations": [_invocation(data)],
        "results": results,
        "properties": {"verdict": data["verdict"], "failOn": data["fail_on"], "complete": data["complete"],
                       "counts": data["counts"], "waivedOmitted": len(reported) - len(shown),
                       "model": meta["model"]["name"],
                       "modelSha256": meta["model"]["sha256"], "dataSha256": meta["data"]["sha256"],
                       "rulebook": {"name": meta["rulebook"]["name"], "sha256": meta["rulebook"]["sha256"]}},
    }
    return {"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": [run]}


def _descriptor(rule_id: str, rule: dict[str, Any] | None, severity: str) -> dict[str, Any]:
    if rule is None:  # a result without recorded rule documentation: the id is all we know
        return {"id": rule_id, "shortDescription": {"text": rule_id},
                "defaultConfiguration": {"level": LEVELS[severity]}}
    docs = rule["docs"]
    markdown = "\n\n".join([
        f"**{rule_id} {rule['name']}**: {docs['summary']}",
        f"## What it checks\n{docs['what']}", f"## Why it matters\n{docs['why']}",
        f"## How it is measured\n{docs['how']}", f"## How to fix it\n{docs['fix']}",
        "## Parameters\n" + "\n".join(f"- `{k}` = `{v!r}`" for k, v in rule.get("params", {}).items()),
        "## References\n" + "\n".join(f"- {ref}" for ref in docs["references"]),
    ])
    text = f"{docs['summary']}\n\n{docs['what']}\n\nHow to fix it: {docs['fix']}"
    return {
        "id": rule_id,
        "name": "".join(part.capitalize() for part in rule["name"].split("-")),
        "shortDescription": {"text": docs["summary"]},
        "fullDescription": {"text": _clip(docs["what"], MAX_DESCRIPTION)},
        "help": {"text": text, "markdown": markdown},
        "defaultConfiguration": {"level": LEVELS[rule["severity"]]},
        "properties": {"tags": [rule["family"], "mechanistic-interpretability"], "check": rule["check"],
                       "parameters": rule.get("params", {})},
    }


def _result(finding: dict[str, Any], index: dict[str, int], locations: dict[str, Any],
            baseline: dict[tuple, str] | None) -> dict[str, Any]:
    location = finding.get("location") or {}
    component = location.get("component")
    message = finding["message"] + measured_suffix(finding)
    waiver = finding.get("waiver")
    if waiver and waiver["state"] == "expired":
        message += f" [waiver {waiver['id']} expired on {waiver['expires']}; it no longer waives]"
    identity = fingerprint(finding["rule_id"], component, finding.get("metric"))
    sarif_location: dict[str, Any] = {}
    physical = physical_location(finding["rule_id"], location, locations)
    if physical is not None:
        sarif_location["physicalLocation"] = physical
    if component:
        sarif_location["logicalLocations"] = [{"name": component, "fullyQualifiedName": component,
                                               "kind": _logical_kind(location)}]
    result: dict[str, Any] = {
        "ruleId": finding["rule_id"],
        "ruleIndex": index[finding["rule_id"]],
        "kind": "fail",
        "level": "error" if finding["status"] == "error" else LEVELS[finding["severity"]],
        "message": {"text": message},
        "locations": [sarif_location] if sarif_location else [],
        "partialFingerprints": {FINGERPRINT: identity, LINE_HASH: f"{identity[:16]}:1"},
        "properties": {"status": finding["status"], "severity": finding["severity"], "component": component,
                       "metric": finding.get("metric"), "value": finding.get("value"),
                       "threshold": finding.get("threshold")},
    }
    if finding.get("interval"):
        result["properties"]["interval"] = finding["interval"]
        result["properties"]["confidence"] = finding.get("confidence")
    if baseline is not None:  # new / updated / unchanged since the baseline given with --baseline
        key = (finding["rule_id"], component or "", finding.get("metric") or "")
        result["baselineState"] = baseline.get(key, "unchanged")
    if waiver and waiver["state"] == "active":
        result["suppressions"] = [{"kind": "external", "status": "accepted",
                                   "justification": waiver["justification"],
                                   "properties": {"waiver": waiver["id"], "approver": waiver["approver"],
                                                  "expires": waiver["expires"]}}]
    elif waiver:
        result["properties"]["expiredWaiver"] = waiver
    return result


def physical_location(rule_id: str, location: dict[str, Any],
                      locations: dict[str, Any]) -> dict[str, Any] | None:
    """Where a finding points in the repository: its layer's model class line, else the spec line declaring its
    input, else the spec line enabling its rule, else line 1 of the model or data file (a quick run); None when
    nothing of the audit lies in the repository (an in-memory model audited through the Python API)."""
    layer, component = location.get("layer"), location.get("component") or ""
    spec = locations.get("spec") or {}
    if layer and layer in (locations.get("layers") or {}):
        found = locations["layers"][layer]
        return _region(found["uri"], found["line"])
    if component.startswith("input:") and component[6:] in (spec.get("inputs") or {}):
        return _region(spec["uri"], spec["inputs"][component[6:]])
    if spec:
        return _region(spec["uri"], (spec.get("rules") or {}).get(rule_id, 1))
    if locations.get("anchor"):
        return _region(locations["anchor"]["uri"], 1)
    return None


def _clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters at a word boundary, with an ellipsis when cut."""
    if len(text) <= limit:
        return text
    cut = text[:limit - 1].rsplit(" ", 1)[0].rstrip(" ,;:")
    return cut + "\u2026"


def _region(uri: str, line: int) -> dict[str, Any]:
    return {"artifactLocation": {"uri": uri, "uriBaseId": SRCROOT}, "region": {"startLine": max(int(line), 1)}}


def _logical_kind(location: dict[str, Any]) -> str:
    if location.get("unit"):
        return "member"
    if location.get("layer"):
        return "module"
    return "parameter" if (location.get("component") or "").startswith("input:") else "element"


def _invocation(data: dict[str, Any]) -> dict[str, Any]:
    meta = data["metadata"]
    notes = []
    for finding in data["findings"]:
        if finding["status"] == "skipped":
            notes.append(_note("note", f"{finding['rule_id']} skipped: {finding['message']}", finding["rule_id"]))
        elif finding["status"] == "error":
            notes.append(_note("error", f"{finding['rule_id']} errored: {finding['message']}", finding["rule_id"]))
    for entry in (data.get("waivers") or {}).get("entries", []):
        if entry["expired"]:
            notes.append(_note("warning", f"waiver {entry['id']} ({entry['rule']} {entry['component']}) expired on "
                                          f"{entry['expires']}: it no longer waives", entry["rule"]))
        if not entry["used"]:
            notes.append(_note("warning", f"waiver {entry['id']} ({entry['rule']} {entry['component']}) is unused: "
                                          "it matches no failing finding", entry["rule"]))
    invocation: dict[str, Any] = {"executionSuccessful": bool(data["complete"]), "commandLine": meta.get("command", ""),
                                  "exitCode": 1 if data["verdict"] == "fail" else 0}
    if meta.get("started_at"):
        invocation["startTimeUtc"] = meta["started_at"]
    if meta.get("finished_at"):
        invocation["endTimeUtc"] = meta["finished_at"]
    if notes:
        invocation["toolExecutionNotifications"] = notes
    return invocation


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(name)).strip("-") or "model"


def _note(level: str, text: str, rule_id: str) -> dict[str, Any]:
    return {"level": level, "message": {"text": text}, "associatedRule": {"id": rule_id}}


def _baseline_states(diff: dict[str, Any] | None) -> dict[tuple, str] | None:
    if diff is None:
        return None
    states = {}
    for name, state in (("new", "new"), ("changed", "updated")):
        for entry in diff.get(name, []):
            states[(entry["rule_id"], entry["component"] or "", entry["metric"] or "")] = state
    return states
