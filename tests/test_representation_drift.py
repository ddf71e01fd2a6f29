"""D107 representation drift: fingerprints stored in a bundle, compared with a later model without the old one.

Planted: a retrain that changes what the second layer computes (drift caught there, not in the kept first layer)
vs a fine-tune that keeps the mechanism and the same weights (CKA 1.0)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.drift_models import baseline_model, changed_second_layer, drift_data, fine_tuned
from torch import nn

import mechaudit
from mechaudit.checks.representation_drift import FILE
from mechaudit.report import build_bundle
from mechaudit.techniques.cka import linear_cka
from mechaudit.techniques.fingerprints import centred_gram, deserialise, gram_cka, gram_rsa, match_layers


@pytest.fixture(scope="module")
def trained() -> dict[str, nn.Module]:
    base = baseline_model()
    return {"base": base, "fine": fine_tuned(base), "changed": changed_second_layer(base)}


def _bundle(model: nn.Module, where: Path) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    x, y = drift_data()
    result = mechaudit.audit(model, x, labels=y, select=["D107"])
    for name, content in build_bundle(result, ("json",)).items():
        (where / name).parent.mkdir(parents=True, exist_ok=True)
        (where / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return where


def _drift(model: nn.Module, baseline: Path) -> dict[str, mechaudit.findings.Finding]:
    x, y = drift_data()
    result = mechaudit.audit(model, x, labels=y, select=["D107"], baseline=baseline)
    return {f.location.component: f for f in result.findings}


def test_gram_cka_equals_the_feature_space_formula_and_rsa_is_rank_based() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 12, generator=g), torch.randn(64, 7, generator=g)
    assert gram_cka(centred_gram(x), centred_gram(y)) == pytest.approx(linear_cka(x, y), abs=1e-6)
    rotated = x @ torch.linalg.qr(torch.randn(12, 12, generator=g))[0] * 3.0
    assert gram_cka(centred_gram(x), centred_gram(rotated)) == pytest.approx(1.0, abs=1e-6)
    assert gram_rsa(centred_gram(x), centred_gram(rotated)) == pytest.approx(1.0, abs=1e-6)
    assert gram_rsa(centred_gram(x), centred_gram(y)) < 0.3


def test_a_bundle_stores_fingerprints_listed_in_its_manifest(trained, tmp_path: Path) -> None:
    bundle = _bundle(trained["base"], tmp_path)
    stored = deserialise((bundle / FILE).read_bytes(), FILE)
    assert list(stored.grams) == ["0", "2"] and stored.samples == 256
    assert FILE in (bundle / "manifest.json").read_text()


def test_a_changed_layer_drifts_while_a_fine_tune_and_the_same_weights_do_not(trained, tmp_path: Path) -> None:
    bundle = _bundle(trained["base"], tmp_path)
    same = _drift(trained["base"], bundle)
    assert {f.status for f in same.values()} == {"pass"}
    assert all(f.evidence["cka"] == 1.0 for f in same.values())
    fine = _drift(trained["fine"], bundle)
    assert {f.status for f in fine.values()} == {"pass"} and min(f.evidence["cka"] for f in fine.values()) > 0.99
    changed = _drift(trained["changed"], bundle)
    assert changed["0"].status == "pass" and changed["0"].evidence["cka"] == pytest.approx(1.0, abs=1e-6)
    assert changed["2"].status == "fail" and changed["2"].evidence["cka"] < 0.6 and changed["2"].evidence["rsa"] < 0.6
    assert "re-review" in changed["2"].message


def test_without_a_baseline_or_its_fingerprints_the_rule_only_records(trained, tmp_path: Path) -> None:
    x, y = drift_data()
    alone = mechaudit.audit(trained["base"], x, labels=y, select=["D107"])
    assert [f.status for f in alone.findings] == ["pass"] and "no --baseline" in alone.findings[0].message
    bundle = _bundle(trained["base"], tmp_path)
    (bundle / FILE).unlink()  # a bundle audited without D107
    missing = mechaudit.audit(trained["base"], x, labels=y, select=["D107"], baseline=bundle / "findings.json")
    assert [f.status for f in missing.findings] == ["pass"] and "holds no" in missing.findings[0].message


def test_fingerprints_of_other_samples_are_refused(trained, tmp_path: Path) -> None:
    bundle = _bundle(trained["base"], tmp_path)
    x, y = drift_data()
    result = mechaudit.audit(trained["base"], x, labels=y, select=["D107"], baseline=bundle, seed=1)
    assert [f.status for f in result.findings] == ["error"] and "other samples" in result.findings[0].message


def test_renamed_layers_are_matched_by_best_match() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(32, 8, generator=g), torch.randn(32, 8, generator=g)
    baseline = {"encoder.0": centred_gram(a), "encoder.2": centred_gram(b)}
    current = {"body.first": centred_gram(a * 2), "encoder.2": centred_gram(b), "body.second": centred_gram(b + a)}
    pairs = match_layers(current, baseline)
    assert pairs == {"body.first": ("encoder.0", "best match"), "encoder.2": ("encoder.2", "name")}


def test_audit_baseline_on_the_command_line_compares_fingerprints(cli, tmp_path: Path) -> None:
    x, y = drift_data()
    np.savez(tmp_path / "d.npz", inputs=x.numpy(), labels=y.numpy())
    flags = ("--data", tmp_path / "d.npz", "--select", "D107", "--rulebook", "compliance")
    old = tmp_path / "old"
    assert cli("audit", "--model", "fixtures.drift_models:baseline_model", *flags, "--out", old).code == 0
    assert (old / FILE).is_file()
    same = cli("audit", "--model", "fixtures.drift_models:baseline_model", *flags, "--baseline", old, "-q")
    assert same.code == 0, same.err
    changed = cli("audit", "--model", "fixtures.drift_models:changed_model", *flags, "--baseline", old,
                  "--out", tmp_path / "new")
    assert changed.code == 1 and "D107" in changed.out  # compliance: a changed mechanism blocks the release


def test_the_report_draws_drift_layer_by_layer(trained, tmp_path: Path) -> None:
    from mechaudit.report.figures import representation_drift_figures
    from mechaudit.report.json_report import result_to_dict

    bundle = _bundle(trained["base"], tmp_path)
    x, y = drift_data()
    result = mechaudit.audit(trained["changed"], x, labels=y, select=["D107"], baseline=bundle)
    first, second = result_to_dict(result)["findings"]
    assert [r["layer"] for r in first["evidence"]["by_layer"]] == ["0", "2"] and "by_layer" not in second["evidence"]
    figure = representation_drift_figures(first, "d107")[0]
    assert "<svg" in figure.svg and "Changed: 2." in figure.caption
    assert representation_drift_figures(second, "d107") == []


def test_diff_compares_two_bundles_fingerprints(cli, trained, tmp_path: Path) -> None:
    old = _bundle(trained["base"], tmp_path / "old")
    new = _bundle(trained["changed"], tmp_path / "new")
    text = cli("diff", old, new).out
    assert "drift        0: linear CKA 1.000" in text and "drift        2: linear CKA 0.3" in text
    data = json.loads(cli("diff", old, new, "--format", "json").out)
    assert [r["layer"] for r in data["representation_drift"]["layers"]] == ["0", "2"]
    (new / FILE).unlink()
    assert "representation_drift" not in json.loads(cli("diff", old, new, "--format", "json").out)
