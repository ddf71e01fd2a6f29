"""L203 (attribution sanity by cascading randomisation): a model-independent attribution fails, gradients pass, and
the attribution-based findings of the audit are marked unreliable whatever the rule order."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.localization_toys import edge_attribution
from safetensors.torch import load_file

import mechaudit
from mechaudit.engine import run_audit
from mechaudit.examples import example_spec
from mechaudit.examples.digits.model import build
from mechaudit.report.json_report import result_to_dict
from mechaudit.report.sarif import sarif_log
from mechaudit.spec import load_spec
from mechaudit.techniques import attribution
from mechaudit.techniques.randomization import cascading_randomization, rank_correlations

DIGITS = Path(mechaudit.__file__).parent / "examples" / "digits"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    model = build()
    model.load_state_dict(load_file(str(DIGITS / "digits.safetensors")))
    model.eval()
    inputs = torch.from_numpy(np.load(DIGITS / "audit_data.npz")["inputs"])[:48]
    return model, inputs, model(inputs).argmax(-1)


def test_an_edge_detector_survives_randomisation(digits) -> None:
    model, inputs, targets = digits
    result = cascading_randomization(model, inputs, targets, lambda m, x, t: edge_attribution(m, x, t, None, 0))
    assert [step.module for step in result.steps] == ["classifier.2", "classifier.0", "features.2", "features.0"]
    assert result.final_correlation > 0.99 and result.max_correlation > 0.99


@pytest.mark.parametrize("method", ["saliency", "integrated_gradients"])
def test_gradient_attributions_change_with_the_model(digits, method: str) -> None:
    model, inputs, targets = digits
    result = cascading_randomization(model, inputs, targets,
                                     lambda m, x, t: attribution.attribute(m, x, t, CPU, method, n_steps=16))
    assert result.final_correlation < 0.5  # measured: saliency 0.03-0.06, integrated gradients 0.37-0.42


def test_randomisation_leaves_the_audited_model_untouched(digits) -> None:
    model, inputs, targets = digits
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cascading_randomization(model, inputs, targets, lambda m, x, t: attribution.attribute(m, x, t, CPU, "saliency"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_rank_correlation_ignores_elements_at_the_baseline() -> None:
    inputs = torch.tensor([[0.0, 0.0, 1.0, 2.0, 3.0]])
    support = inputs != 0
    same_zeros = rank_correlations(torch.tensor([[0.0, 0.0, 1.0, 2.0, 3.0]]),
                                   torch.tensor([[0.0, 0.0, 3.0, 2.0, 1.0]]), support)
    assert same_zeros == pytest.approx([-1.0])  # the shared zeros do not count as agreement


def _audit(select: tuple[str, ...], rules: tuple = ()):
    spec = load_spec(example_spec("digits-control"))
    return run_audit(dataclasses.replace(spec, options=dataclasses.replace(spec.options, select=select,
                                                                            rules=rules)))


SALIENCY = (("L201", "test", {"method": "saliency"}), ("L203", "test", {"method": "saliency"}))


def test_l203_passes_for_gradients_and_l201_says_its_attributions_are_reliable() -> None:
    result = _audit(("L201", "L203"), SALIENCY)
    sanity = [f for f in result.findings if f.rule_id == "L203"]
    assert [f.status for f in sanity] == ["pass"] and sanity[0].evidence["attribution_method"] == "saliency"
    ratio = next(f for f in result.findings if f.metric == "attribution_ratio")
    assert ratio.evidence["attribution_reliable"] is True
    assert ratio.evidence["attribution_sanity"]["status"] == "passed"


def test_a_broken_attribution_fails_l203_and_marks_l201_unreliable(monkeypatch) -> None:
    monkeypatch.setitem(attribution.ATTRIBUTORS, "saliency", edge_attribution)
    result = _audit(("L201", "L203"), SALIENCY)
    sanity = next(f for f in result.findings if f.rule_id == "L203")
    assert sanity.status == "fail" and sanity.value > 0.99
    assert sanity.evidence["used_by"] == ["L201"]
    ratio = next(f for f in result.findings if f.metric == "attribution_ratio")  # L201 ran before L203
    assert ratio.evidence["attribution_reliable"] is False
    assert ratio.evidence["attribution_sanity"]["status"] == "failed"
    assert "attributions unreliable" in ratio.message
    flips = next(f for f in result.findings if f.metric == "flip_rate")
    assert "attribution_reliable" not in flips.evidence  # an intervention, not an attribution
    assert sanity.interval["low"] > 0.6 and sanity.confidence == "certain"  # fails beyond doubt
    (reported,) = [r for r in sarif_log(result_to_dict(result))["runs"][0]["results"] if r["ruleId"] == "L203"]
    assert reported["properties"]["interval"] == sanity.interval and reported["properties"]["confidence"] == "certain"


def test_without_l203_the_sanity_of_l201_is_not_checked() -> None:
    result = _audit(("L201",))
    ratio = next(f for f in result.findings if f.metric == "attribution_ratio")
    assert ratio.evidence["attribution_reliable"] is None
    assert ratio.evidence["attribution_sanity"]["status"] == "not checked"


def test_l203_checks_every_method_the_audit_relies_on() -> None:
    result = _audit(("L201", "L203"), (("L201", "test", {"method": "saliency"}),))
    methods = {f.evidence["attribution_method"]: f.status for f in result.findings if f.rule_id == "L203"}
    assert methods == {"integrated_gradients": "pass", "saliency": "pass"}


QUICK = {"method": "saliency", "samples": 16, "max_evaluations": 2}


def _sanity_finding(**params):
    (finding,) = _audit(("L203",), (("L203", "test", {**QUICK, **params}),)).findings
    return finding


def test_l203_carries_a_bootstrap_interval_and_flags_a_verdict_that_straddles_its_threshold() -> None:
    control = _sanity_finding()
    assert control.interval["low"] <= control.value <= control.interval["high"]
    assert "over 16 samples" in control.interval["method"]
    assert control.status == "pass" and control.confidence == "certain" and "uncertain" not in control.message
    planted = _sanity_finding(max_rank_correlation=control.value)  # the threshold at the point estimate
    assert planted.value == control.value and planted.interval == control.interval
    assert planted.confidence == "uncertain" and "[uncertain: the 95% interval" in planted.message


def test_the_cascade_keeps_each_samples_correlation() -> None:
    original = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 5.0]])
    other = torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0]])
    support = original != 0
    assert rank_correlations(original, other, support) == pytest.approx([1.0, -1.0])  # the third has one element


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: compares CUDA's randomised weights with the CPU's")
def test_randomised_weights_are_the_same_on_cuda_and_cpu() -> None:
    from mechaudit.techniques.randomization import randomize_module

    conv1d = pytest.importorskip("transformers.pytorch_utils").Conv1D
    nn = torch.nn
    for make in (lambda: nn.Linear(6, 5), lambda: nn.Conv2d(3, 4, 3), lambda: conv1d(5, 6), lambda: nn.LayerNorm(6)):
        drawn = []
        for device in ("cpu", "cuda"):
            torch.manual_seed(0)
            module = make().to(device)
            torch.manual_seed(1)
            randomize_module(module)
            drawn.append([p.detach().cpu() for p in module.parameters()])
        assert all(torch.equal(a, b) for a, b in zip(*drawn))
