"""Crash isolation, budgets, atomic output under interruption, determinism."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch
from conftest import REPO, read_findings, rulebook_with, write_project

from mechaudit.checks.registry import CHECKS, register
from mechaudit.engine import run_audit
from mechaudit.spec import load_spec


@dataclass(frozen=True)
class _NoParams:
    pass


@pytest.fixture(scope="module", autouse=True)
def misbehaving_checks():
    @register("test_oom", _NoParams)
    def _oom(context, rule):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    @register("test_sleeps", _NoParams)
    def _sleeps(context, rule):
        time.sleep(5)
    yield
    CHECKS.pop("test_oom")
    CHECKS.pop("test_sleeps")


def test_out_of_memory_and_time_budget_become_error_findings(tmp_path: Path) -> None:
    project = write_project(tmp_path, data_table='labels = "labels"')
    spec = load_spec(project.spec)
    spec = replace(spec, options=replace(spec.options, rule_timeout=1))
    started = time.perf_counter()
    result = run_audit(spec, rulebook_with(tmp_path, {"D901": "test_oom", "D902": "test_sleeps"}))
    assert time.perf_counter() - started < 4.5  # the sleeping rule was cut off after its 1 s budget
    runs = {run.rule_id: run for run in result.rules}
    assert runs["D901"].status == "error" and "ran out of memory" in runs["D901"].findings[0].message
    assert runs["D902"].status == "error"
    assert "time budget of 1 s; lift it with --rule-timeout" in runs["D902"].findings[0].message
    assert {runs[r].status for r in ("D101", "L202")} == {"pass", "fail"}  # the others completed
    assert not result.complete and result.gate_failed
    assert not replace(result, fail_on="never").gate_failed  # unless the user chose otherwise


def _without_times(data: dict) -> dict:
    for key in ("started_at", "finished_at", "command", "plan"):  # the plan holds this machine's timings
        data["metadata"].pop(key)
    for rule in data["rules"]:
        rule.pop("seconds")
    return data


@pytest.mark.slow
def test_digits_findings_are_identical_across_runs(cli, example_audit, tmp_path: Path) -> None:
    """A fresh audit against the session's earlier one (conftest's ``example_audit``, the same command with
    ``--format json``)."""
    code, earlier = example_audit("digits")
    assert code == 1
    assert cli("audit", "--example", "digits", "--out", tmp_path / "again", "-q").code == 1
    assert _without_times(read_findings(tmp_path / "again")) == _without_times(earlier)


def _start_slow_audit(project, out: Path, marker: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "MECHAUDIT_SLOW_MARKER": str(marker)}
    return subprocess.Popen([sys.executable, "-m", "mechaudit", "audit", str(project.spec), "--out", str(out), "-q"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_run_leaves_the_previous_report_intact(tmp_path: Path, signum: int) -> None:
    project = write_project(tmp_path / "proj", factory="fixtures.toy_models:slow",
                            arrays=None, data_table='labels = "labels"')
    out = tmp_path / "report"
    out.mkdir()
    (out / "findings.json").write_text('{"previous": true}')
    (out / "manifest.json").write_text('{"tool": {"name": "mechaudit"}, "files": {"findings.json": "0"}}')
    marker = tmp_path / "forward-started"
    process = _start_slow_audit(project, out, marker)
    deadline = time.time() + 60
    while not marker.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert marker.exists(), process.communicate()
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signum, err  # 130 for SIGINT, 143 for SIGTERM
    assert "interrupted" in err and "Traceback" not in err
    assert json.loads((out / "findings.json").read_text()) == {"previous": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["forward-started", "proj", "report"]
