"""GitHub Actions annotations (``--format github``): workflow commands that GitHub turns into annotations.

``mechaudit audit --format github`` prints them to stdout (where the Actions runner reads workflow commands)
and, with ``--out``, also writes them to ``annotations.txt``. One line per finding that did not pass:

- ``::error`` for a failing finding of severity ``error`` and for a rule that errored, ``::warning`` for
  severity ``warning``, ``::notice`` for ``info``;
- ``::notice`` with "waived" in the title for a finding under an active waiver (shown, not hidden);
- ``::warning`` for an expired waiver (the finding it matched fails again) and for an unused waiver.

Each annotation points at the same file and line as the SARIF result (see :mod:`.sarif`), relative to the
repository root, so run mechaudit from the repository root for GitHub to place them on the diff.
"""

from __future__ import annotations

from typing import Any

from ..findings import AuditResult
from ..waivers import describe_waiver
from .json_report import result_to_dict
from .sarif import LEVELS, physical_location

COMMANDS = {"error": "error", "warning": "warning", "note": "notice"}


def render_github(result: AuditResult) -> str:
    return "".join(line + "\n" for line in annotation_lines(result_to_dict(result)))


def annotation_lines(data: dict[str, Any]) -> list[str]:
    locations = data["metadata"].get("locations") or {}
    lines = []
    for finding in data["findings"]:
        if finding["status"] not in ("fail", "error"):
            continue
        waiver = finding.get("waiver")
        location = finding.get("location") or {}
        where = location.get("component") or "model"
        title = f"{finding['rule_id']} {finding['status']} at {where}"
        message = finding["message"]
        if finding.get("value") is not None and finding.get("threshold") is not None:
            message += f" ({finding['metric']} {finding['value']:.4g} > threshold {finding['threshold']:.4g})"
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
