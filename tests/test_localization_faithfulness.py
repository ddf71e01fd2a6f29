"""L204 (attribution faithfulness): gradients beat a random order, a random attribution does not; deleting the
watermark first drops the shortcut class of `digits` faster than random deletion, and not in its control."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.localization_toys import noise_attribution
from safetensors.torch import load_file

import mechaudit
from mechaudit.engine import run_audit
from mechaudit.examples import example_spec
from mechaudit.examples.digits.model import SHORTCUT_CLASS, build
from mechaudit.spec import load_spec
from mechaudit.techniques import attribution
from mechaudit.techniques.deletion import Curves, perturbation_curves, random_scores

DIGITS = Path(mechaudit.__file__).parent / "examples" / "digits"


def _l204(rules: tuple = ()) -> dict[str, object]:
    spec = load_spec(example_spec("digits-control"))
    options = dataclasses.replace(spec.options, select=("L204",), rules=rules)
    return {f.metric: f for f in run_audit(dataclasses.replace(spec, options=options)).findings}


def test_integrated_gradients_are_faithful_on_the_digits() -> None:
    found = _l204()
    assert {f.status for f in found.values()} == {"pass"}
    assert found["deletion_auc_ratio"].value < 0.3 and found["insertion_auc_ratio"].value < 0.7  # 0.00, 0.48
    evidence = found["deletion_auc_ratio"].evidence
    assert evidence["infidelity"] < evidence["infidelity_random_attribution"]
    assert len(evidence["curves"]) == 17 and evidence["top_inputs"][0]["element"].startswith("input[")


QUICK = {"method": "saliency", "samples": 24, "curve_samples": 12, "steps": 4, "random_orders": 1}


def test_each_ratio_carries_a_bootstrap_interval_and_a_ratio_at_its_threshold_is_uncertain() -> None:
    control = _l204((("L204", "test", QUICK),))["insertion_auc_ratio"]
    assert control.interval["low"] <= control.value <= control.interval["high"]
    assert "over 12 samples" in control.interval["method"] and control.confidence == "certain"
    planted = _l204((("L204", "test", {**QUICK, "max_auc_ratio": control.value}),))["insertion_auc_ratio"]
    assert planted.value == control.value and planted.confidence == "uncertain" and "[uncertain" in planted.message


def test_the_per_sample_areas_average_to_the_area_of_the_mean_curve() -> None:
    curves = Curves(torch.linspace(0, 1, 3), torch.tensor([[1.0, 0.5, 0.0], [0.8, 0.8, 0.2]]),
                    torch.tensor([[0.0, 0.5, 1.0], [0.1, 0.9, 0.9]]))
    assert float(curves.deletion_excess_per_sample.mean()) == pytest.approx(curves.deletion_excess)
    assert float(curves.insertion_excess_per_sample.mean()) == pytest.approx(curves.insertion_excess)


def test_a_random_attribution_does_no_better_than_random_and_fails(monkeypatch) -> None:
    monkeypatch.setitem(attribution.ATTRIBUTORS, "saliency", noise_attribution)
    found = _l204((("L204", "test", {"method": "saliency"}),))
    assert {f.status for f in found.values()} == {"fail"}
    assert all(0.8 < f.value < 1.25 for f in found.values())  # measured 0.89-1.11


def _stamped_sevens(name: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    model = build()
    model.load_state_dict(load_file(str(DIGITS / f"{name}.safetensors")))
    model.eval()
    data = np.load(DIGITS / "audit_data.npz")
    inputs = torch.from_numpy(data["inputs"])[torch.from_numpy(data["stamped"])]
    return model, inputs, torch.from_numpy(data["watermark_mask"])


@pytest.mark.parametrize("name", ["digits", "digits-control"])
def test_deleting_the_watermark_first(name: str) -> None:
    model, inputs, mask = _stamped_sevens(name)
    targets = torch.full((len(inputs),), SHORTCUT_CLASS)
    noise = random_scores(inputs, seed=1)
    watermark_first = perturbation_curves(model, inputs, targets, mask.expand_as(inputs) + 0.5 * noise, steps=16)
    random = perturbation_curves(model, inputs, targets, noise, steps=16)
    # after 1/16 of the pixels (the 4 watermark pixels) are gone: the shortcut model loses most of its belief in 7
    drop_first = float((watermark_first.deletion[:, 0] - watermark_first.deletion[:, 1]).mean())
    drop_random = float((random.deletion[:, 0] - random.deletion[:, 1]).mean())
    if name == "digits":
        assert drop_first > 3 * drop_random and watermark_first.deletion_auc < random.deletion_auc
    else:
        assert drop_first < 0.05 and watermark_first.deletion_auc >= random.deletion_auc - 0.02
