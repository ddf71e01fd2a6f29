"""L201 (forbidden-input reliance) and the attribution methods, on planted truth and controls.

Tabular shortcut (the label leaks a protected column) against its control; sparse parity (the attributed inputs
are the planted bits) against label-permutation training; the digits watermark against its control.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.localization_toys import PLANTED_BITS, parity_data, parity_model, write_tabular
from safetensors.torch import load_file

import mechaudit
from mechaudit.engine import run_audit
from mechaudit.examples import example_spec
from mechaudit.examples.digits.model import build
from mechaudit.spec import load_spec
from mechaudit.techniques.attribution import METHODS, attribute

DIGITS = Path(mechaudit.__file__).parent / "examples" / "digits"


def _digits(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    model = build()
    model.load_state_dict(load_file(str(DIGITS / f"{name}.safetensors")))
    return model.eval(), torch.from_numpy(np.load(DIGITS / "audit_data.npz")["inputs"])


def _audit(spec_path: Path, select: tuple[str, ...], rules: tuple = ()):
    spec = load_spec(spec_path)
    options = dataclasses.replace(spec.options, select=select, rules=rules)
    return run_audit(dataclasses.replace(spec, options=options))


def _by_metric(result, rule: str) -> dict[str, object]:
    return {f.metric: f for f in result.findings if f.rule_id == rule}


@pytest.mark.parametrize("method", METHODS)
def test_every_method_attributes_the_digits_cnn(method: str) -> None:
    model, inputs = _digits("digits")
    batch = inputs[:6]
    attributions = attribute(model, batch, model(batch).argmax(-1), torch.device("cpu"), method, n_steps=8)
    assert attributions.shape == batch.shape and torch.isfinite(attributions).all()
    assert float(attributions.abs().sum()) > 0


def test_lrp_on_a_model_it_has_no_rules_for_says_so() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2)).eval()
    with pytest.raises(ValueError, match="LRP does not support"):
        attribute(model, torch.randn(3, 4), torch.zeros(3, dtype=torch.long), torch.device("cpu"), "lrp")


@pytest.fixture(scope="module")
def tabular(tmp_path_factory) -> dict[bool, object]:
    """The tabular shortcut and its control, audited for L201 and L205 (one audit each)."""
    return {leak: _audit(write_tabular(tmp_path_factory.mktemp(f"leak{leak}"), leak), ("L201", "L205"))
            for leak in (True, False)}


def test_l201_feature_mode_flags_the_leaked_protected_column(tabular) -> None:
    found = _by_metric(tabular[True], "L201")
    ratio, flips = found["attribution_ratio"], found["flip_rate"]
    assert ratio.location.component == "input:sex" and ratio.evidence["column"] == "sex"
    assert ratio.status == "fail" and ratio.value > 4.0           # measured 5.3x its area's share
    assert flips.status == "fail" and flips.value > 0.5          # the counterfactual flips 94% of predictions
    assert "each of its other values" in flips.evidence["intervention"]


def test_l201_feature_mode_control_passes(tabular) -> None:
    found = _by_metric(tabular[False], "L201")
    assert found["attribution_ratio"].status == "pass" and found["attribution_ratio"].value < 1.5  # measured 0.6x
    assert found["flip_rate"].status == "pass" and found["flip_rate"].value < 0.05                 # measured 1.8%


def test_sparse_parity_top_attributed_inputs_are_the_planted_bits() -> None:
    inputs, labels = parity_data(512, seed=1)
    result = mechaudit.audit(parity_model(), inputs, labels=labels, select=["L204"])
    top = [row["index"][0] for row in result.findings[0].evidence["top_inputs"][:3]]
    assert sorted(top) == sorted(PLANTED_BITS)


def test_sparse_parity_after_label_permutation_the_planted_bits_are_not_reported() -> None:
    inputs, labels = parity_data(512, seed=1)
    result = mechaudit.audit(parity_model(permuted=True), inputs, labels=labels, select=["L204"])
    top = [row["index"][0] for row in result.findings[0].evidence["top_inputs"][:3]]
    assert sorted(top) != sorted(PLANTED_BITS)


@pytest.fixture(scope="module")
def watermark() -> dict[str, object]:
    return {name: _audit(example_spec(name), ("L201",)) for name in ("digits", "digits-control")}


def test_watermark_attribution_ratio_shortcut_over_control_is_at_least_three(watermark) -> None:
    ratio = {name: _by_metric(result, "L201")["attribution_ratio"] for name, result in watermark.items()}
    assert ratio["digits"].value >= 3 * ratio["digits-control"].value   # measured 6.4 against 1.7
    worst = max((row for row in ratio["digits"].evidence["per_class"] if row["eligible"]),
                key=lambda row: row["attribution_ratio"])
    assert worst["predicted_class"] == "7"                              # the class the watermark was planted on
    assert ratio["digits"].status == "fail" and ratio["digits-control"].status == "pass"


def test_l201_method_is_selectable_and_reported(tmp_path: Path) -> None:
    result = _audit(example_spec("digits"), ("L201",), (("L201", "test", {"method": "saliency", "n_steps": 2}),))
    ratio = _by_metric(result, "L201")["attribution_ratio"]
    assert ratio.evidence["method"] == "saliency" and ratio.status == "fail"
    assert {row["predicted_class"] for row in ratio.evidence["per_class"]} == {str(c) for c in range(10)}
