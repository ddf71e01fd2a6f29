"""L208 cue sensitivity: a token classifier whose output flips on a planted cue token fails; its control passes."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import write_project
from fixtures.cue_models import cue_pairs, cued

from mechaudit.engine import run_audit
from mechaudit.model_view import ModelView
from mechaudit.spec import load_spec
from mechaudit.techniques.cue_sensitivity import cue_sensitivity


def _project(tmp_path: Path, factory: str) -> Path:
    with_cue, without_cue = cue_pairs()
    model = cued().eval()
    arrays = {"inputs": without_cue.numpy(), "labels": model(without_cue).argmax(1).numpy(),
              "cued": with_cue.numpy(), "plain": without_cue.numpy()}
    table = 'labels = "labels"\n[data.cues]\nwith_cue = "cued"\nwithout_cue = "plain"\n'
    return write_project(tmp_path, arrays=arrays, data_table=table,
                         model_table=f'factory = "fixtures.cue_models:{factory}"',
                         extra='[audit]\nselect = ["L208"]\n').spec


def test_technique_finds_the_planted_pathway() -> None:
    with_cue, without_cue = cue_pairs()
    model = cued()
    view = ModelView.discover(model, without_cue[:2])
    result = cue_sensitivity(view, with_cue, without_cue)
    assert result.pathway == ["fc1:u2"]                       # unit 3 depends on the cue but carries nothing
    assert result.total_flip_rate == pytest.approx(0.5, abs=0.15)   # the class-0 half flips to class 1
    assert result.pathway_flip_rate == result.total_flip_rate
    assert result.pathway_share == pytest.approx(1.0, abs=1e-4)
    assert result.scores.nodes["fc1:u3"] == 0.0


def test_l208_fails_the_cued_model_and_reports_the_pathway(tmp_path: Path) -> None:
    result = run_audit(load_spec(_project(tmp_path, "cued")))
    (finding,) = [f for f in result.findings if f.rule_id == "L208"]
    assert finding.status == "fail" and finding.value > 0.3
    assert finding.interval["low"] <= finding.value <= finding.interval["high"]  # bootstrap over the pairs
    assert finding.interval["low"] > 0.05 and finding.confidence == "certain"
    assert finding.location.component == "fc1:u2"
    assert [row["component"] for row in finding.evidence["pathway"]] == ["fc1:u2"]


def test_l208_passes_the_control(tmp_path: Path) -> None:
    result = run_audit(load_spec(_project(tmp_path, "cue_control")))
    (finding,) = [f for f in result.findings if f.rule_id == "L208"]
    assert finding.status == "pass" and finding.value == 0.0
    assert finding.evidence["total_flip_rate"] == 0.0


def test_l208_is_skipped_without_cue_pairs(tmp_path: Path) -> None:
    project = write_project(tmp_path, extra='[audit]\nselect = ["L208"]\n')
    (run,) = run_audit(load_spec(project.spec)).rules
    assert run.status == "skipped" and "cue pairs" in run.reason
