"""A finding's confidence interval in words, the same in every report (console, SARIF, JUnit, HTML, PDF)."""

from __future__ import annotations

from typing import Any


def interval_text(finding: dict[str, Any]) -> str:
    """``95% interval 0.12..0.31`` (plus ``, UNCERTAIN: straddles the threshold``), or "" without an interval."""
    interval = finding.get("interval")
    if not interval:
        return ""
    text = f"{interval['level']:.0%} interval {interval['low']:.4g}..{interval['high']:.4g}"
    if finding.get("confidence") == "uncertain":
        text += ", UNCERTAIN: straddles the threshold"
    return text


def comparison(finding: dict[str, Any]) -> str:
    """``>`` when the value is above its threshold, else ``<=`` (an uncertain pass failed by the rulebook is ``<=``)."""
    return ">" if finding["value"] > finding["threshold"] else "<="


def measured_suffix(finding: dict[str, Any]) -> str:
    """`` (metric 0.28 > threshold 0.1; 95% interval ...)`` for a finding with a value and a threshold, else ""."""
    if finding.get("value") is None or finding.get("threshold") is None:
        return ""
    interval = f"; {interval_text(finding)}" if finding.get("interval") else ""
    return (f" ({finding['metric']} {finding['value']:.4g} {comparison(finding)} threshold "
            f"{finding['threshold']:.4g}{interval})")
