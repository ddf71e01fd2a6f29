"""Command-line habits of the tools users gate releases with (ruff, semgrep): JSON on stdout, --debug anywhere,
configuration found from the spec, NO_COLOR, a light start-up, ordinary directory modes, GitHub annotations."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from conftest import REPO, read_findings, write_project
from fixtures.compliance import audit_dict, failing_project

from mechaudit.report.github import annotation_lines, step_summary


def test_json_without_out_goes_to_stdout_and_nothing_else(cli, project) -> None:
    result = cli("audit", project.spec, "--format", "json")
    assert result.code == 0
    data = json.loads(result.out)  # the whole of stdout parses
    assert data["verdict"] == "pass" and data["metadata"]["model"]["name"] == "toy"
    assert "PASS" in result.err  # the summary moved to stderr
    plain = cli("audit", project.spec)  # no --format, no --out: the summary alone, on stdout
    assert plain.code == 0 and plain.out.startswith(("D", "L", "R", "PASS")) and not plain.out.startswith("{")
    clash = cli("audit", project.spec, "--format", "json,github")
    assert clash.code == 2 and "both print to stdout" in clash.err


@pytest.mark.parametrize("argv", [["--debug", "audit", "missing.toml"], ["audit", "missing.toml", "--debug"],
                                  ["audit", "--debug", "missing.toml"]])
def test_debug_is_accepted_anywhere_and_keeps_exit_codes(cli, tmp_path: Path, monkeypatch, argv) -> None:
    monkeypatch.chdir(tmp_path)
    result = cli(*argv)
    assert result.code == 2
    assert "Traceback (most recent call last)" in result.err
    assert result.error_lines[-1].startswith("mechaudit: error: missing.toml")
    assert cli("audit", "missing.toml").err.count("\n") == 1  # without --debug: one line


def test_debug_exit_code_in_a_real_process(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, "-m", "mechaudit", "--debug", "audit", "missing.toml"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" in done.stderr and done.stdout == ""


def test_configuration_comes_from_the_spec_not_the_working_directory(cli, tmp_path: Path, monkeypatch) -> None:
    project = write_project(tmp_path / "repo" / "models")
    (tmp_path / "repo" / "pyproject.toml").write_text('[tool.mechaudit]\nrulebook = "compliance"\n')
    rulebooks = []
    for cwd in (tmp_path / "repo", tmp_path):  # same spec, two working directories
        monkeypatch.chdir(cwd)
        out = tmp_path / f"out-{len(rulebooks)}"
        cli("audit", project.spec, "--out", out, "-q")
        rulebooks.append(read_findings(out)["metadata"]["rulebook"]["name"])
    assert rulebooks == ["compliance", "compliance"]
    cli("audit", project.spec, "--out", tmp_path / "isolated", "-q", "--isolated")
    assert read_findings(tmp_path / "isolated")["metadata"]["rulebook"]["name"] == "default"
    other = tmp_path / "ci.toml"
    other.write_text('[tool.mechaudit]\nrulebook = "default"\nseed = 7\n')
    cli("audit", project.spec, "--out", tmp_path / "configured", "-q", "--config", other)
    configured = read_findings(tmp_path / "configured")["metadata"]
    assert configured["rulebook"]["name"] == "default" and configured["seed"] == 7
    assert "no [tool.mechaudit] table" in cli("audit", project.spec, "--config", project.spec).err
    assert cli("audit", project.spec, "--config", tmp_path / "none.toml").code == 2
    assert cli("audit", project.spec, "--config", other, "--isolated").code == 2
    # `rules --config SPEC` reads the spec's own pyproject too, wherever it runs
    assert json.loads(cli("rules", "--format", "json", "--config", project.spec).out)["rulebook"] == "compliance"


def test_no_color_is_honoured(cli, project, monkeypatch) -> None:
    monkeypatch.setattr(click._compat, "isatty", lambda stream: True)  # as on a terminal
    assert "\x1b[" in cli("audit", project.spec).out
    monkeypatch.setenv("NO_COLOR", "1")
    assert "\x1b[" not in cli("audit", project.spec).out


def test_out_directory_follows_the_umask(cli, project) -> None:
    previous = os.umask(0o022)
    try:
        assert cli("audit", project.spec, "--out", project.out(), "--format", "json,html", "-q").code == 0
    finally:
        os.umask(previous)
    assert project.out().stat().st_mode & 0o777 == 0o755
    assert (project.out() / "figures").stat().st_mode & 0o777 == 0o755


def test_importing_the_cli_loads_no_torch() -> None:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", "import mechaudit.cli"], env=env,
                          capture_output=True, text=True, timeout=120, check=True)
    modules = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time")}
    assert "mechaudit.cli" in modules
    assert not {name for name in modules if name.split(".")[0] in ("torch", "scipy", "sklearn", "matplotlib")}
    probe = "import sys; from mechaudit.cli import main; main(['--help']); main(['audit', '--help']); " \
            "print(sorted(m for m in ('torch', 'scipy', 'mechaudit.rulebook') if m in sys.modules))"
    helped = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert helped.stdout.strip().endswith("[]"), helped.stdout[-300:]


def test_github_annotations_are_capped_with_a_summary_line(tmp_path: Path) -> None:
    data = audit_dict(failing_project(tmp_path / "p", local_model=False).spec)
    assert len(annotation_lines(data)) == 3  # under the cap: every finding, no summary
    many = copy.deepcopy(data)
    template = next(f for f in data["findings"] if f["rule_id"] == "L202" and f["status"] == "fail")
    for i in range(1, 25):  # 24 more failing units: GitHub would show 10 warnings and drop the rest
        many["findings"].append({**copy.deepcopy(template), "location": {**template["location"],
                                                                         "component": f"fc1:u{i}"}})
    lines = annotation_lines(many)
    kinds = [line.split(" ", 1)[0] for line in lines]
    assert kinds.count("::error") == 2 and kinds.count("::warning") == 10 and kinds.count("::notice") == 1
    assert lines[-1].startswith("::notice title=mechaudit%3A more findings::15 warnings more not shown")
    summary = step_summary(many)
    assert summary.startswith("## mechaudit: FAIL") and summary.count("\n| L202 | fail | warning |") == 25


def test_step_summary_is_appended_when_github_sets_it(cli, tmp_path: Path, monkeypatch) -> None:
    project = failing_project(tmp_path / "p", local_model=False)
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    result = cli("audit", project.spec, "--format", "github", "-q")
    assert result.code == 1 and result.out.count("::error") == 2
    text = summary.read_text()
    assert text.startswith("earlier step\n## mechaudit: FAIL") and "| L201 | fail | error | `input:watermark` |" in text
