"""The console summary printed after an audit, ruff-style: one line per finding that did not pass."""

from __future__ import annotations

import click

from ..findings import AuditResult

_COLORS = {"fail": "red", "error": "magenta", "skipped": "yellow", "pass": "green"}


def summary_lines(result: AuditResult, verbose: bool = False) -> list[str]:
    lines = []
    for finding in result.findings:
        if finding.status == "pass" and not verbose:
            continue
        where = finding.location.component if finding.location else "model"
        status = click.style(finding.status.upper(), fg=_COLORS[finding.status])
        lines.append(f"{finding.rule_id} {status} [{finding.severity}] {where}: {finding.message}")
    counts = result.counts()
    verdict = click.style("FAIL", fg="red", bold=True) if result.gate_failed else click.style("PASS", fg="green",
                                                                                               bold=True)
    lines.append(f"{verdict}: {len(result.rules)} rules, " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
                 + ("" if result.complete else " (audit incomplete: a rule errored)"))
    return lines
