"""Command-line behaviour: exit codes, one-line errors, no partial output."""

import json
import pickle
from pathlib import Path

import numpy as np
from conftest import read_findings, toy_arrays, write_project


def test_rules_explain_examples(cli) -> None:
    listing = cli("rules")
    assert listing.code == 0 and "D101" in listing.out and "L201" in listing.out
    as_json = json.loads(cli("rules", "--format", "json").out)
    assert {r["id"] for r in as_json["rules"]} >= {"D101", "L201", "L202"}
    explained = cli("explain", "l201")
    assert explained.code == 0
    for section in ("What it checks", "Why it matters", "How it is measured", "How to fix it", "References"):
        assert section in explained.out
    assert cli("explain", "X123").code == 2
    assert "digits-control" in cli("examples").out


def test_quick_run_flags(cli, tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", **toy_arrays())
    out = tmp_path / "out"
    result = cli("audit", "--model", "fixtures.toy_models:signal_mlp", "--data", tmp_path / "d.npz",
                 "--out", out, "--select", "D101,L202")
    assert result.code == 0, result.err
    assert {f["rule_id"] for f in read_findings(out)["findings"]} == {"D101", "L202"}


def test_gate_exit_code_follows_fail_on(cli, project) -> None:
    assert cli("audit", project.spec, "--select", "L202", "-q").code == 0  # warning-level failure
    failing = cli("audit", project.spec, "--select", "L202", "--fail-on", "warning")
    assert failing.code == 1 and "L202 FAIL" in failing.out


def _assert_clean_error(result, fragment: str, out: Path) -> None:
    assert result.code == 2
    assert len(result.error_lines) == 1, result.err
    assert fragment in result.err and "Traceback" not in result.err
    assert not out.exists()


def test_bad_inputs_exit_2_with_one_line_and_no_output(cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cases = []
    # a missing file
    missing = write_project(tmp_path / "missing")
    (missing.dir / "data.npz").unlink()
    cases.append((missing.spec, (), "data file not found"))
    # a spec with an unknown key
    unknown = write_project(tmp_path / "unknown", extra="[audit]\nturbo = true")
    cases.append((unknown.spec, (), "unknown key 'turbo'"))
    # inputs whose shape does not fit the model
    shape = write_project(tmp_path / "shape", arrays={"inputs": np.ones((4, 9), np.float32)})
    cases.append((shape.spec, (), "do the inputs fit the model"))
    # NaN in the data
    arrays = toy_arrays(10)
    arrays["inputs"][2, 1] = np.nan
    nan = write_project(tmp_path / "nan", arrays=arrays)
    cases.append((nan.spec, (), "NaN"))
    # labels out of range
    arrays = toy_arrays(10)
    arrays["labels"][0] = 7
    labels = write_project(tmp_path / "labels", arrays=arrays)
    cases.append((labels.spec, (), "labels: values must lie in 0..1"))
    # an unknown rule id in --select
    good = write_project(tmp_path / "good")
    cases.append((good.spec, ("--select", "Z999"), "rule selector 'Z999'"))
    # a pickled model without the opt-in
    with open(tmp_path / "good" / "model.pt", "wb") as handle:
        pickle.dump({"not": "a model"}, handle)
    pickled = write_project(tmp_path / "pickled", model_table='pickle = "model.pt"')
    (pickled.dir / "model.pt").write_bytes((tmp_path / "good" / "model.pt").read_bytes())
    cases.append((pickled.spec, (), "--trust-pickle"))
    for spec, extra, fragment in cases:
        _assert_clean_error(cli("audit", spec, "--out", out, *extra), fragment, out)


def test_usage_errors(cli, project, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _assert_clean_error(cli("audit", "--out", out), "give exactly one of", out)
    _assert_clean_error(cli("audit", project.spec, "--example", "digits", "--out", out), "exactly one", out)
    _assert_clean_error(cli("audit", "--example", "nope", "--out", out), "no such example", out)
    _assert_clean_error(cli("audit", project.spec, "--format", "pdfx", "--out", out), "unknown format", out)
    _assert_clean_error(cli("audit", project.spec, "--seed", "-1", "--out", out), "seed", out)
    assert cli("audit", project.spec, "--fail-on", "sometimes").code == 2


def test_out_is_replaced_atomically_and_holds_requested_formats(cli, project) -> None:
    out = project.out()
    assert cli("audit", project.spec, "--out", out, "--format", "sarif", "-q").code == 0  # a previous report
    result = cli("audit", project.spec, "--out", out, "--format", "json,html", "-q")
    assert result.code == 0
    assert sorted(p.name for p in out.iterdir()) == ["figures", "findings.json", "manifest.json", "report.html",
                                                     "statement.intoto.json"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".out.")]


def test_main_restores_the_signal_handler_it_installs() -> None:
    """An embedding program (a notebook, a test runner) keeps its own SIGTERM handler after ``cli.main``."""
    import signal

    from mechaudit.cli import main

    def own_handler(_signum, _frame) -> None:
        pass

    previous = signal.signal(signal.SIGTERM, own_handler)
    try:
        assert main(["examples"]) == 0
        assert signal.getsignal(signal.SIGTERM) is own_handler
    finally:
        signal.signal(signal.SIGTERM, previous)
