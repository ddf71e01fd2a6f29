"""The console summary printed after an audit, ruff-style: one line per finding that did not pass."""

from __future__ import annotations

import click

from ..findings import AuditResult
from ..text_safety import terminal_safe
from ..waivers import describe_waiver, waiver_problems
from .intervals import interval_text

_COLORS = {"fail": "red", "error": "magenta", "skipped": "yellow", "pass": "green"}


def summary_lines(result: AuditResult, verbose: bool = False) -> list[str]:
    lines = []
    for finding in result.findings:
        if finding.status == "pass" and not verbose and finding.confidence != "uncertain":
            continue
        where = terminal_safe(finding.location.component if finding.location else "model")
        status = click.style(finding.status.upper(), fg=_COLORS[finding.status])
        line = f"{finding.rule_id} {status} [{finding.severity}] {where}: {terminal_safe(finding.message)}"
        if finding.interval is not None and finding.confidence != "uncertain":  # an uncertain message names it
            line += f" ({interval_text(finding.to_dict())})"
        if finding.waiver is not None:  # waived findings are shown, marked, never hidden
            mark = "WAIVED" if finding.waived else "WAIVER EXPIRED"
            waiver = terminal_safe(describe_waiver(finding.waiver))
            line += f" {click.style(mark, fg='cyan' if finding.waived else 'red')} ({waiver})"
        lines.append(line)
    lines += [f"warning: {terminal_safe(problem)}" for problem in waiver_problems(result.waivers)]
    if result.baseline is not None:
        summary = result.baseline["summary"]
        lines.append(f"since the baseline: {summary['new_failures']} new failing, {summary['regressions']} "
                     f"regressed, {summary['resolved']} resolved, {summary['changed']} changed "
                     f"(`mechaudit diff` gates on it)")
    counts = result.counts()
    verdict = click.style("FAIL", fg="red", bold=True) if result.gate_failed else click.style("PASS", fg="green",
                                                                                               bold=True)
    if result.waivers is not None and result.waivers["waived"]:
        counts = {**counts, "waived": result.waivers["waived"]}
    lines.append(f"{verdict}: {len(result.rules)} rules, " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
                 + ("" if result.complete else " (audit incomplete: a rule errored)"))
    return lines
