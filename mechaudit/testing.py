"""Assertions for a project's own tests (pytest or unittest): fail with the findings listed.

>>> result = mechaudit.audit(model, inputs, labels=labels, rulebook="compliance")   # doctest: +SKIP
>>> assert_audit_passes(result)
AssertionError: mechaudit gate failed (fail on error): 1 failing finding
  L201 fail [error] input:watermark: 17.8% of predictions change ... (flip_rate 0.178 > 0.05)
"""

from __future__ import annotations

from dataclasses import replace

from .findings import AuditResult, Finding
from .waivers import describe_waiver


def gate_failures(result: AuditResult, fail_on: str | None = None) -> list[Finding]:
    """The findings that fail the gate (at ``fail_on``, default the result's own; waived ones never do)."""
    judged = replace(result, fail_on=fail_on) if fail_on else result
    return [f for f in result.findings if judged.fails_gate(f)]


def format_finding(finding: Finding) -> str:
    where = finding.location.component if finding.location else "model"
    line = f"{finding.rule_id} {finding.status} [{finding.severity}] {where}: {finding.message}"
    if finding.value is not None and finding.threshold is not None:
        line += f" ({finding.metric} {finding.value:.4g} > {finding.threshold:.4g})"
    if finding.waiver is not None:
        line += f"; {describe_waiver(finding.waiver)}"
    return line


def assert_audit_passes(result: AuditResult, fail_on: str | None = None) -> None:
    """Raise :class:`AssertionError` listing every finding that fails the gate; return quietly otherwise."""
    __tracebackhide__ = True  # pytest: show the assertion, not this helper
    failing = gate_failures(result, fail_on)
    if failing:
        level = fail_on or result.fail_on
        plural = "s" if len(failing) != 1 else ""
        lines = [f"mechaudit gate failed (fail on {level}): {len(failing)} failing finding{plural}"]
        lines += [f"  {format_finding(f)}" for f in failing]
        raise AssertionError("\n".join(lines))


__all__ = ["assert_audit_passes", "format_finding", "gate_failures"]


def compare_findings(first: dict, second: dict) -> tuple[list[str], float]:
    """Compare two audits' ``findings.json`` contents (e.g. CPU vs CUDA, one process vs ``torchrun``): the
    findings whose status differs (or that only one audit has), and the largest relative difference of their values
    (``|a - b| / max(|a|, |b|, 1e-12)``)."""
    a, b = _keyed(first), _keyed(second)
    differ = [f"{_name(key)}: only in one audit" for key in a.keys() ^ b.keys()]
    differ += [f"{_name(key)}: {a[key]['status']} vs {b[key]['status']}" for key in a.keys() & b.keys()
               if a[key]["status"] != b[key]["status"]]
    return sorted(differ), largest_difference(first, second)[0]


def largest_difference(first: dict, second: dict) -> tuple[float, str | None]:
    """The largest relative difference of two audits' finding values (as :func:`compare_findings` measures it) and
    the finding it is in (``"RULE location"``; None when no value differs)."""
    a, b = _keyed(first), _keyed(second)
    largest, where = 0.0, None
    for key in a.keys() & b.keys():
        x, y = a[key].get("value"), b[key].get("value")
        if x is not None and y is not None and abs(x - y) / max(abs(x), abs(y), 1e-12) > largest:
            largest, where = abs(x - y) / max(abs(x), abs(y), 1e-12), _name(key)
    return largest, where


def _keyed(result: dict) -> dict:
    return {(f["rule_id"], (f.get("location") or {}).get("component"), f.get("metric")): f
            for f in result["findings"]}


def _name(key: tuple) -> str:
    return f"{key[0]} {key[1] or 'model'}"
