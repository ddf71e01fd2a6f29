"""What the real-size benchmarks share: a spec folder written to a temporary directory, an audit of it in its own
process (wall time and peak RSS of that process), and the per-rule table read back from its findings.json.

The models are built from their shapes with seeded random weights (nothing is downloaded); the builders live in
:mod:`shapes`. Each benchmark prints one table; compare ratios, not seconds, on a shared machine. The CPU seconds
of the audit process (user + system) are printed beside its wall time: on a loaded machine they are steadier.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

BENCHMARKS = Path(__file__).resolve().parent


@dataclass
class Run:
    """One audit run in its own process."""

    findings: dict[str, Any] | None
    seconds: float
    cpu_seconds: float
    peak_rss_mib: float
    exit_code: int
    tail: str

    def rule_rows(self) -> list[tuple[str, str, str, str]]:
        """(rule, seconds, status, what the screen reported) for each rule that ran."""
        rows = []
        for rule in (self.findings or {}).get("rules", []):
            rows.append((rule["id"], f"{rule['seconds']:.1f}", rule["status"], screen_summary(self.findings,
                                                                                             rule["id"])))
        return rows


def write_spec(folder: Path, spec: str, data: dict[str, np.ndarray], model_source: str | None = None) -> Path:
    """Write ``audit.toml``, ``audit_data.npz`` and (when given) ``model.py`` into ``folder``; return the spec."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text("", encoding="utf-8")        # the spec folder is its project root
    np.savez(folder / "audit_data.npz", **data)
    if model_source is not None:
        (folder / "bench_model.py").write_text(model_source, encoding="utf-8")
    (folder / "audit.toml").write_text(spec, encoding="utf-8")
    return folder / "audit.toml"


def run_audit(spec: Path, out: Path, *extra: str, timeout: float | None = None) -> Run:
    """``mechaudit audit SPEC --out OUT --format json EXTRA`` in a fresh process, with its wall time and peak RSS."""
    argv = ["audit", str(spec), "--out", str(out), "--format", "json", "-q", *extra]
    code = ("import resource, sys\n"
            "from mechaudit.cli import main\n"
            f"code = main({argv!r})\n"
            "usage = resource.getrusage(resource.RUSAGE_SELF)\n"
            "print('PEAK_RSS_KIB', usage.ru_maxrss, 'CPU_S', usage.ru_utime + usage.ru_stime)\n"
            "sys.exit(code)\n")
    started = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                              cwd=spec.parent)
    except subprocess.TimeoutExpired:
        return Run(None, time.perf_counter() - started, float("nan"), float("nan"), 124, f"killed after {timeout} s")
    seconds = time.perf_counter() - started
    usage = [line.split() for line in done.stdout.splitlines() if line.startswith("PEAK_RSS_KIB")]
    findings_file = out / "findings.json"
    findings = json.loads(findings_file.read_text(encoding="utf-8")) if findings_file.is_file() else None
    peak, cpu = (int(usage[-1][1]) / 1024, float(usage[-1][3])) if usage else (float("nan"), float("nan"))
    return Run(findings, seconds, cpu, peak, done.returncode,
               (done.stdout + done.stderr)[-2000:])


def screen_summary(findings: dict[str, Any] | None, rule_id: str) -> str:
    """The screen's agreement with the exact interventions, as the rule's findings report it (or '-'). A screen
    pooled over layers (the same ``checked`` components in every layer's finding) is shown once; layers screened
    on their own or measured exactly (no ``checked`` list) each get their line."""
    parts, pooled = [], set()
    for finding in (findings or {}).get("findings", []):
        if finding["rule_id"] != rule_id:
            continue
        screen = finding.get("evidence", {}).get("screen")
        if not isinstance(screen, dict):
            continue
        fields = [f"{key} {screen[key]:.3g}" if isinstance(screen[key], float) else f"{key} {screen[key]}"
                  for key in ("scored", "checked_exactly", "spearman", "top_k_recall") if screen.get(key) is not None]
        line = ", ".join(fields)
        shared = json.dumps(screen, sort_keys=True, default=str) if screen.get("checked") else None
        if fields and (shared is None or shared not in pooled):
            pooled.add(shared)
            parts.append(f"{(finding.get('location') or {}).get('layer') or '-'}: " + line)
    return "; ".join(parts[:3]) + (f"; ... ({len(parts)} in all)" if len(parts) > 3 else "") if parts else "-"


def print_table(title: str, rows: list[tuple[str, ...]], header: tuple[str, ...]) -> None:
    """A Markdown table (pasteable into a note)."""
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(" --- " for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")


def print_run(title: str, run: Run, targets: str) -> None:
    """The headline figures of one run, then its per-rule table."""
    statuses = [rule["status"] for rule in (run.findings or {}).get("rules", [])]
    counts = ", ".join(f"{statuses.count(s)} {s}" for s in ("pass", "fail", "error", "skipped") if s in statuses)
    print(f"\n## {title}\n")
    print(f"- wall {run.seconds:.1f} s ({run.seconds / 60:.1f} min), CPU {run.cpu_seconds:.1f} s, "
          f"peak RSS {run.peak_rss_mib / 1024:.2f} GiB, exit {run.exit_code}; rules: {counts or 'none'} "
          f"(targets: {targets})")
    if run.findings is None:
        print(f"- no findings.json; output tail:\n```\n{run.tail}\n```")
        return
    print_table("per rule (seconds from findings.json)", run.rule_rows(), ("rule", "seconds", "status", "screen"))
    errors = [(r["id"], r.get("reason") or "") for r in run.findings["rules"] if r["status"] == "error"]
    for rule_id, reason in errors:
        print(f"- {rule_id} error: {reason[:300]}")
