"""L207 (activation patching): the unit a toy's pairs differ through recovers the whole behaviour; pairs that differ
where the output does not look leave nothing to localise; attribution patching agrees with exact patching."""

from __future__ import annotations

import dataclasses

import torch
from fixtures.exactness import assert_equal_up_to_rounding
from fixtures.localization_toys import patching_pairs
from fixtures.toy_models import signal_mlp

import mechaudit
from mechaudit.engine import run_audit
from mechaudit.examples import example_spec
from mechaudit.loading import AuditData
from mechaudit.model_view import ModelView
from mechaudit.spec import load_spec
from mechaudit.techniques.circuits import logit_difference
from mechaudit.techniques.patching import attribution_patching, exact_patching


def _audit(carried: bool):
    clean, corrupted = patching_pairs(carried=carried)
    model = signal_mlp(spread=1)
    inputs = torch.cat([clean, corrupted])
    data = AuditData(inputs=inputs, labels=model(inputs).argmax(-1).detach(), pairs=(clean, corrupted))
    (finding,) = mechaudit.audit(model, data, select=["L207"]).findings
    return finding


def test_the_unit_the_pairs_differ_through_carries_the_behaviour() -> None:
    finding = _audit(carried=True)
    assert finding.location.component == "fc1:u0" and finding.value > 0.99
    assert finding.evidence["carriers"] == ["fc1:u0"]
    rows = finding.evidence["components"]
    assert rows[0]["component"] == "fc1:u0"  # attribution patching ranked it first; exact patching verified it
    assert rows[0]["attribution_estimate"] > 0.5  # 0.75: the unit is off in the corrupted run (a ReLU kink)
    assert all(abs(row["recovered_fraction"]) < 1e-6 for row in rows[1:])
    assert finding.interval["low"] <= finding.value <= finding.interval["high"] and finding.evidence[
        "uncertain_carriers"] == []  # every pair flips through fc1:u0 alone: 1.0 in every resample


def test_pairs_that_differ_where_the_output_does_not_look_leave_nothing_to_localise() -> None:
    """The pairs change nothing the output reads: the behaviour to localise is absent (issue 24), one finding
    that says so and no recovered fraction."""
    finding = _audit(carried=False)
    assert finding.status == "fail" and finding.metric == "behaviour_absent" and finding.evidence["carried"] is False
    assert finding.evidence["relative_effect"] < 1e-6 and not finding.evidence["presence"]["present"]
    assert "components" not in finding.evidence


def test_exact_patching_equals_patched_forward_passes_and_attribution_patching_ranks_alike() -> None:
    model = signal_mlp(spread=3, hidden=8).eval()
    clean, corrupted = patching_pairs(n=40, carried=True)
    view = ModelView.discover(model, clean[:2])
    layer = view.layers[0]
    targets = torch.stack([model(clean).argmax(-1), model(corrupted).argmax(-1)], 1).detach()
    exact = exact_patching(view, [layer], clean, corrupted, targets, logit_difference)["fc1"]
    per_pair = exact_patching(view, [layer], clean, corrupted, targets, logit_difference, per_pair=True)["fc1"]
    assert per_pair.shape == (layer.size, 40) and torch.allclose(per_pair.sum(1).float(), exact)
    expected = []
    with torch.no_grad():
        base = logit_difference(model(corrupted), targets).sum()
        clean_units = model.fc1(clean)
        for unit in range(layer.size):
            def patch(_module, _inputs, output, unit=unit):
                output = output.clone()
                output[:, unit] = clean_units[:, unit]
                return output
            handle = model.fc1.register_forward_hook(patch)
            expected.append(logit_difference(model(corrupted), targets).sum() - base)
            handle.remove()
    assert_equal_up_to_rounding(exact, torch.stack(expected).to(exact.dtype))
    estimate = attribution_patching(view, [layer], clean, corrupted, targets, logit_difference)["fc1"]
    assert torch.equal(exact.abs() > 1e-6, estimate.abs() > 1e-6)  # the same units carry it


def _example_l207(name: str, **params):
    spec = load_spec(example_spec(name))
    options = dataclasses.replace(spec.options, select=("L207",), rules=(("L207", "test", params),))
    (finding,) = run_audit(dataclasses.replace(spec, options=options)).findings
    return finding


def test_recovered_fractions_carry_intervals_and_a_carrier_at_the_threshold_is_uncertain() -> None:
    control = _example_l207("induction", samples=32)
    assert control.interval["low"] <= control.value <= control.interval["high"]
    assert "over 32 pairs" in control.interval["method"] and control.confidence is None  # describes: no gate
    rows = control.evidence["components"]
    assert all(row["recovered_interval"][0] - 1e-6 <= row["recovered_fraction"] <= row["recovered_interval"][1] + 1e-6
               for row in rows)  # the interval rounded to 6 decimals in the evidence
    assert control.evidence["uncertain_carriers"] == [] and "uncertain" not in control.message
    second = rows[1]  # blocks.0.attn:h2, about half of the behaviour
    planted = _example_l207("induction", samples=32, min_recovered=second["recovered_fraction"])
    assert planted.evidence["uncertain_carriers"] == [second["component"]]
    assert f"straddles {second['recovered_fraction']:.0%}" in planted.message


def test_a_relative_effect_at_min_effect_is_uncertain() -> None:
    control = _example_l207("digits-control")  # 256 pairs: 6.1%, below min_effect 10% beyond doubt
    low, high = control.evidence["relative_effect_interval"]
    assert low <= control.evidence["relative_effect"] <= high < 0.1 and "uncertain" not in control.message
    planted = _example_l207("digits-control", min_effect=control.evidence["relative_effect"])
    assert "the 95% interval of the relative effect" in planted.message
