"""GitHub Actions annotations (``--format github``): workflow commands that GitHub turns into annotations.

``mechaudit audit --format github`` prints them to stdout (where the Actions runner reads workflow commands)
and, with ``--out``, also writes them to ``annotations.txt``. One line per finding that did not pass:

- ``::error`` for a failing finding of severity ``error`` and for a rule that errored, ``::warning`` for
  severity ``warning``, ``::notice`` for ``info``;
- ``::notice`` with "waived" in the title for a finding under an active waiver (shown, not hidden);
- ``::warning`` for an expired waiver (the finding it matched fails again) and for an unused waiver.

Each annotation points at the same file and line as the SARIF result (see :mod:`.sarif`), relative to the
repository root, so run mechaudit from the repository root for GitHub to place them on the diff.

GitHub shows at most 10 annotations of each type per step (and 50 per job); the rest are dropped silently. So
at most :data:`MAX_PER_TYPE` lines of each command are printed, the most severe findings first, and when any
are left out a last ``::notice`` says how many and where to find them all (one notice slot is kept for it).
With ``$GITHUB_STEP_SUMMARY`` set, :func:`write_step_summary` appends a markdown summary of the audit (verdict,
counts, every finding that did not pass) to the job's summary page.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..findings import AuditResult, severity_rank
from ..text_safety import markdown_code, markdown_safe
from ..waivers import describe_waiver
from .intervals import measured_suffix
from .json_report import result_to_dict
from .sarif import LEVELS, physical_location

COMMANDS = {"error": "error", "warning": "warning", "note": "notice"}
MAX_PER_TYPE = 10  # what GitHub displays per annotation type and step
SUMMARY_ROWS = 200  # findings listed in the step summary (its limit is 1 MiB per step)


def render_github(result: AuditResult) -> str:
    return "".join(line + "\n" for line in annotation_lines(result_to_dict(result)))


def annotation_lines(data: dict[str, Any], limit: int = MAX_PER_TYPE) -> list[str]:
    """The workflow commands, at most ``limit`` per type, then a notice counting those left out."""
    lines = _all_annotations(data)
    by_type = {c: [line for line in lines if line.startswith(f"::{c} ")] for c in ("error", "warning", "notice")}
    if all(len(of_type) <= limit for of_type in by_type.values()):
        return lines
    room = {c: limit - (c == "notice") for c in by_type}  # one notice slot is the summary's
    left_out = {c: len(of_type) - room[c] for c, of_type in by_type.items() if len(of_type) > room[c]}
    counts = ", ".join(f"{n} {c}{'s' if n > 1 else ''}" for c, n in left_out.items())
    summary = _command("notice", f"{counts} more not shown here (GitHub displays {limit} annotations of each type "
                                 "per step); every finding is in the step summary, findings.json and the SARIF "
                                 "results", "mechaudit: more findings", None)
    return [line for c, of_type in by_type.items() for line in of_type[:room[c]]] + [summary]


def _all_annotations(data: dict[str, Any]) -> list[str]:
    """One command per finding that did not pass and per waiver problem, the most severe findings first."""
    locations = data["metadata"].get("locations") or {}
    lines = []
    failing = [f for f in data["findings"] if f["status"] in ("fail", "error")]
    failing.sort(key=lambda f: ((f.get("waiver") or {}).get("state") == "active", f["status"] != "error",
                                -severity_rank(f["severity"])))
    for finding in failing:
        waiver = finding.get("waiver")
        location = finding.get("location") or {}
        where = location.get("component") or "model"
        title = f"{finding['rule_id']} {finding['status']} at {where}"
        message = finding["message"] + measured_suffix(finding)
        if waiver and waiver["state"] == "active":
            command, title = "notice", f"{title} (waived)"
            message += f"; {describe_waiver(waiver)}"
        else:
            command = "error" if finding["status"] == "error" else COMMANDS[LEVELS[finding["severity"]]]
            if waiver:
                message += f"; {describe_waiver(waiver)}"
        physical = physical_location(finding["rule_id"], location, locations)
        lines.append(_command(command, message, title, physical))
    for entry in (data.get("waivers") or {}).get("entries", []):
        target = f"{entry['rule']} {entry['component']}"
        if entry["expired"]:
            lines.append(_command("warning", f"waiver {entry['id']} ({target}, approved by {entry['approver']}) "
                                             f"expired on {entry['expires']}: it no longer waives",
                                  f"mechaudit waiver {entry['id']} expired", None))
        if not entry["used"]:
            lines.append(_command("warning", f"waiver {entry['id']} ({target}) matches no failing finding; "
                                             "remove it", f"mechaudit waiver {entry['id']} unused", None))
    return lines


def _command(command: str, message: str, title: str, physical: dict[str, Any] | None) -> str:
    props = []
    if physical is not None:
        props += [f"file={_property(physical['artifactLocation']['uri'])}",
                  f"line={physical['region']['startLine']}"]
    props.append(f"title={_property(title)}")
    return f"::{command} {','.join(props)}::{_data(message)}"


def _data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _property(text: str) -> str:
    return _data(text).replace(":", "%3A").replace(",", "%2C")


def write_step_summary(result: AuditResult, path: str | None = None) -> bool:
    """Append the markdown summary to ``$GITHUB_STEP_SUMMARY`` (or ``path``); False when neither is set."""
    target = path or os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return False
    with Path(target).open("a", encoding="utf-8") as handle:
        handle.write(step_summary(result_to_dict(result)))
    return True


def step_summary(data: dict[str, Any]) -> str:
    """A GitHub-flavoured markdown summary: verdict, counts, then a table of the findings that did not pass."""
    meta = data["metadata"]
    verdict = "FAIL" if data["verdict"] == "fail" else "PASS"
    counts = ", ".join(f"{n} {status}" for status, n in data["counts"].items() if n)
    lines = [f"## mechaudit: {verdict} — {markdown_safe(meta['model']['name'])}", "",
             f"Rulebook `{markdown_safe(meta['rulebook']['name'])}`, gate fails on `{data['fail_on']}`"
             f"{'' if data['complete'] else ' (audit incomplete: a rule errored)'}. Findings: {counts}.", ""]
    failing = [f for f in data["findings"] if f["status"] in ("fail", "error")]
    if failing:
        lines += ["| rule | status | severity | component | message |", "| --- | --- | --- | --- | --- |"]
        for finding in failing[:SUMMARY_ROWS]:
            waiver = finding.get("waiver") or {}
            status = finding["status"] + (" (waived)" if waiver.get("state") == "active" else "")
            message = finding["message"] + measured_suffix(finding)
            component = (finding.get("location") or {}).get("component") or "model"
            lines.append(f"| {finding['rule_id']} | {status} | {finding['severity']} | "
                         f"`{markdown_code(component, table=True)}` | {markdown_safe(message)} |")
        if len(failing) > SUMMARY_ROWS:
            lines.append(f"\n{len(failing) - SUMMARY_ROWS} more in findings.json.")
    return "\n".join(lines) + "\n\n"
