"""JUnit XML (``--format junit`` -> ``junit.xml``), for CI test reports (GitLab, Jenkins, Azure, ...).

One test suite per audit, one test case per finding: a rule that reports on the model as a whole gives one
test case, a rule that reports per layer, unit or input gives one per component (and metric). A finding with
status ``fail`` is a ``<failure>`` (its ``type`` is the severity; the text has the value against the threshold),
a rule that errored is an ``<error>``, a skipped rule is ``<skipped>``, and a waived finding is ``<skipped>``
whose message starts with ``waived``. As in ruff's JUnit output, every failing finding is a failure whatever
its severity; the gate verdict (``fail_on``) is the suite property ``verdict``.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import Counter
from typing import Any

from ..findings import FAMILIES, AuditResult
from ..waivers import describe_waiver, waiver_problems
from .intervals import comparison, interval_text
from .json_report import result_to_dict

_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")  # characters XML 1.0 cannot hold


def render_junit(result: AuditResult) -> str:
    return junit_xml(result_to_dict(result))


def junit_xml(data: dict[str, Any]) -> str:
    meta = data["metadata"]
    declared = meta.get("rulebook", {}).get("rules") or {}
    seconds = {r["id"]: r["seconds"] for r in data["rules"]}
    per_rule = Counter(f["rule_id"] for f in data["findings"])
    suite = ET.Element("testsuite", name=f"mechaudit: {meta['model']['name']}",
                       timestamp=str(meta.get("started_at", ""))[:19])
    properties = ET.SubElement(suite, "properties")
    for name, value in _properties(data):
        ET.SubElement(properties, "property", name=name, value=str(value))
    totals = Counter()
    for finding in data["findings"]:
        rule = declared.get(finding["rule_id"]) or {}
        case = ET.SubElement(suite, "testcase", classname=_classname(finding["rule_id"]),
                             name=_case_name(finding, rule.get("name")),
                             time=f"{seconds.get(finding['rule_id'], 0.0) / per_rule[finding['rule_id']]:.4f}")
        totals["tests"] += 1
        kind = _outcome(case, finding, rule)
        if kind:
            totals[kind] += 1
    waiver_lines = waiver_problems(data.get("waivers"))
    if waiver_lines:
        ET.SubElement(suite, "system-out").text = "\n".join(waiver_lines)
    time = f"{sum(seconds.values()):.4f}"
    counts = {"tests": str(totals["tests"]), "failures": str(totals["failures"]), "errors": str(totals["errors"]),
              "skipped": str(totals["skipped"]), "time": time}
    suite.attrib.update(counts)
    root = ET.Element("testsuites", name="mechaudit", **{k: v for k, v in counts.items() if k != "skipped"})
    root.append(suite)
    ET.indent(root)
    text = ET.tostring(root, encoding="unicode")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + _NOT_XML.sub("\ufffd", text) + "\n"


def _properties(data: dict[str, Any]) -> list[tuple[str, Any]]:
    meta = data["metadata"]
    props = [("verdict", data["verdict"]), ("fail_on", data["fail_on"]), ("complete", str(data["complete"]).lower()),
             ("model", meta["model"]["name"]), ("rulebook", meta["rulebook"]["name"]),
             ("rulebook.sha256", meta["rulebook"]["sha256"]), ("mechaudit.version", meta["tool"]["version"])]
    props += [(f"model.sha256:{path}", digest) for path, digest in sorted(meta["model"]["sha256"].items())]
    props += [(f"data.sha256:{path}", digest) for path, digest in sorted(meta["data"]["sha256"].items())]
    waivers = data.get("waivers")
    if waivers:
        props.append(("waivers.file", waivers["file"]))
        for entry in waivers["entries"]:
            state = "expired" if entry["expired"] else ("active" if entry["used"] else "unused")
            props.append((f"waiver.{entry['id']}", (f"{state}: {entry['rule']} {entry['component']} "
                                                    f"until {entry['expires']} ({entry['approver']})")))
    return props


def _classname(rule_id: str) -> str:
    return f"mechaudit.{FAMILIES.get(rule_id[0], 'other')}.{rule_id}"


def _case_name(finding: dict[str, Any], rule_name: str | None) -> str:
    parts = [finding["rule_id"]]
    if rule_name:
        parts.append(rule_name)
    if finding.get("location"):
        parts.append(f"[{finding['location']['component']}]")
    if finding.get("metric"):
        parts.append(finding["metric"])
    return " ".join(parts)


def _outcome(case: ET.Element, finding: dict[str, Any], rule: dict[str, Any]) -> str | None:
    """Add the finding's outcome to its test case; return its JUnit count (failures, errors, skipped, None)."""
    status, waiver = finding["status"], finding.get("waiver")
    detail = _detail(finding, rule)
    if waiver and waiver["state"] == "active":
        skipped = ET.SubElement(case, "skipped", message=f"{describe_waiver(waiver)} (status {status})")
        skipped.text = detail
        return "skipped"
    if status == "fail":
        failure = ET.SubElement(case, "failure", message=finding["message"], type=finding["severity"])
        failure.text = detail
        return "failures"
    if status == "error":
        error = ET.SubElement(case, "error", message=finding["message"], type="rule-error")
        error.text = detail + "\n" + str(finding.get("evidence", {}).get("traceback", ""))
        return "errors"
    if status == "skipped":
        ET.SubElement(case, "skipped", message=finding["message"])
        return "skipped"
    ET.SubElement(case, "system-out").text = detail
    return None


def _detail(finding: dict[str, Any], rule: dict[str, Any]) -> str:
    lines = [f"{finding['rule_id']} {finding['status']} [{finding['severity']}]: {finding['message']}"]
    if finding.get("location"):
        lines.append(f"component: {finding['location']['component']}")
    if finding.get("value") is not None:
        limit = ("" if finding.get("threshold") is None
                 else f" {comparison(finding)} threshold {finding['threshold']:.6g}")
        lines.append(f"{finding.get('metric') or 'value'} = {finding['value']:.6g}{limit}")
        if finding.get("interval"):
            lines.append(f"{interval_text(finding)} ({finding['interval']['method']})")
    waiver = finding.get("waiver")
    if waiver:
        lines.append(describe_waiver(waiver))
    if finding["status"] == "fail" and rule.get("docs"):
        lines.append(f"how to fix: {' '.join(rule['docs']['fix'].split())}")
    return "\n".join(lines)
