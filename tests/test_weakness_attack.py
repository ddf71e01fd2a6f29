"""R305: PGD confined to a flagged input region, against the whole-input attack and noise; planted shortcut vs
control (a toy here, the embedded `digits` pair in the slow test)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mechaudit

pytest.importorskip("art")


def _toy(reads_region: bool) -> nn.Module:
    """Two classes from features 1-7 (their sum's sign around 3.5); the shortcut model also reads feature 0, the
    region, with a large weight."""
    model = nn.Linear(8, 2)
    with torch.no_grad():
        model.weight.zero_()
        model.weight[1, 1:] = 1.0
        model.bias.copy_(torch.tensor([0.0, -3.5]))
        if reads_region:
            model.weight[1, 0] = 8.0
            model.bias[1] = -7.5
    return model


def _audit(model: nn.Module, **rules) -> list:
    x = torch.rand(200, 8, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(8)
    mask[0] = 1.0
    result = mechaudit.audit(model, x, labels=(x[:, 1:].sum(1) > 3.5).long(), masks={"tag": mask}, select=["R305"],
                             rules={"R305": {"epsilons": "0.1,0.5,1.0", "steps": 10, **rules}})
    return result.findings


def test_an_attack_through_the_region_flips_the_shortcut_model_only() -> None:
    shortcut, control = _audit(_toy(True)), _audit(_toy(False))
    assert [f.status for f in shortcut] == ["fail"] and [f.status for f in control] == ["pass"]
    assert shortcut[0].location.component == "input:tag"
    rates = control[0].evidence["flip_rates"]
    assert rates["region"] == [0.0, 0.0, 0.0] and rates["noise"] == [0.0, 0.0, 0.0]
    assert rates["whole_input"][-1] > 0.3  # the control is fragile over the whole input, not through the region
    smallest = shortcut[0].evidence["smallest_epsilon"]
    assert smallest["region"] is not None and control[0].evidence["smallest_epsilon"]["region"] is None


def _weak_reader(weight: float) -> nn.Module:
    """The toy, reading the region with ``weight`` (0: not at all)."""
    model = _toy(False)
    with torch.no_grad():
        model.weight[1, 0], model.bias[1] = weight, -3.5 - weight / 2
    return model


def test_a_flip_rate_near_its_limit_reads_uncertain_and_one_far_from_it_certain() -> None:
    weak = _audit(_weak_reader(0.3), epsilons="0.5", steps=5)[0]
    control = _audit(_weak_reader(0.0), epsilons="0.5", steps=5)[0]
    for finding in (weak, control):
        assert finding.interval["low"] <= finding.value <= finding.interval["high"]
        assert "200 samples" in finding.interval["method"]
    # the region read weakly flips 13% (interval about 0.085..0.17) around the 0.1 limit: a coin flip, said so
    assert weak.status == "fail" and weak.confidence == "uncertain" and "uncertain" in weak.message
    # no flip of 200: the Wilson interval still reaches 1.9% (a bootstrap of the booleans gave [0, 0])
    assert control.value == 0.0 and 0.015 < control.interval["high"] < 0.02
    assert control.status == "pass" and control.confidence == "certain"


def test_a_mask_per_sample_is_read_for_the_attacked_samples() -> None:
    x = torch.rand(200, 8, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(200, 8)
    masks[:, 0] = 1.0
    result = mechaudit.audit(_toy(True), x, labels=(x[:, 1:].sum(1) > 3.5).long(), masks={"tag": masks},
                             select=["R305"], rules={"R305": {"epsilons": "0.5", "samples": 64, "steps": 5}})
    assert [f.status for f in result.findings] == ["fail"] and result.findings[0].evidence["samples"] == 64


def test_bad_budgets_are_an_error_finding() -> None:
    findings = _audit(_toy(True), epsilons="0.1,abc")
    assert [f.status for f in findings] == ["error"] and "comma-separated" in findings[0].message


@pytest.fixture(scope="module")
def r305_findings(tmp_path_factory) -> dict[str, list[dict]]:
    """``mechaudit audit --example NAME --select R305`` of both digits examples, run once for the tests below."""
    import json

    from mechaudit.cli import main

    findings = {}
    for example in ("digits", "digits-control"):
        out = tmp_path_factory.mktemp("r305") / example
        main(["audit", "--example", example, "--select", "R305", "--out", str(out), "-q"])
        findings[example] = json.loads((out / "findings.json").read_text())["findings"]
    return findings


@pytest.mark.slow  # PGD on 256 digits at six budgets: seconds alone
def test_digits_watermark_is_attackable_and_the_control_is_not(r305_findings) -> None:
    values = {}
    for example in ("digits", "digits-control"):
        finding = r305_findings[example][0]
        values[example] = (finding["status"], finding["value"])
    assert values["digits"][0] == "fail" and values["digits"][1] > 0.15
    assert values["digits-control"][0] == "pass" and values["digits-control"][1] < 0.06


@pytest.mark.slow  # the unit scan and PGD driving three units of each model at six budgets
def test_digits_critical_units_are_reachable_and_the_controls_less(r305_findings) -> None:
    units = {}
    for example in ("digits", "digits-control"):
        findings = r305_findings[example]
        units[example] = [(f["status"], f["value"]) for f in findings if f["evidence"]["target"] == "unit"]
    assert len(units["digits"]) == 3 and len(units["digits-control"]) == 3
    assert "fail" in [status for status, _ in units["digits"]] and max(v for _, v in units["digits"]) > 0.1
    assert all(status == "pass" for status, _ in units["digits-control"])


def test_the_report_draws_the_three_curves() -> None:
    from mechaudit.report.figures import weakness_attack_figures
    from mechaudit.report.json_report import result_to_dict

    x = torch.rand(50, 8, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(8)
    mask[0] = 1.0
    result = mechaudit.audit(_toy(True), x, labels=(x[:, 1:].sum(1) > 3.5).long(), masks={"tag": mask},
                             select=["R305"], rules={"R305": {"epsilons": "0.5,1.0", "steps": 5}})
    finding = result_to_dict(result)["findings"][0]
    figures = weakness_attack_figures(finding, "r305")
    assert len(figures) == 1 and "input:tag" in figures[0].caption
    assert all(legend in figures[0].svg for legend in ("PGD in the region", "PGD on the whole input",
                                                       "noise in the region"))


class _ThroughUnit(nn.Module):
    """Class 1 when features 1-7 sum above 3.75: through hidden unit ``hidden:u0`` (planted), or through a skip
    connection while the hidden unit reads feature 0 and feeds nothing (the control)."""

    def __init__(self, through_unit: bool) -> None:
        super().__init__()
        self.hidden, self.out, self.skip = nn.Linear(8, 2), nn.Linear(2, 2), nn.Linear(8, 2)
        with torch.no_grad():
            for layer in (self.hidden, self.out, self.skip):
                layer.weight.zero_()
                layer.bias.zero_()
            if through_unit:
                self.hidden.weight[0, 1:], self.hidden.bias[0] = 1.0, -3.5
                self.out.weight[1, 0], self.out.bias[1] = 4.0, -1.0
            else:  # the hidden unit reads feature 0, which nothing else uses
                self.hidden.weight[0, 0], self.hidden.bias[0] = 1.0, -0.5
                self.skip.weight[1, 1:], self.skip.bias[1] = 4.0, -15.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x))) + self.skip(x)


def _unit_audit(model: nn.Module, **rules) -> list:
    x = torch.rand(200, 8, generator=torch.Generator().manual_seed(0))
    result = mechaudit.audit(model, x, labels=(x[:, 1:].sum(1) > 3.75).long(), select=["R305"],
                             rules={"R305": {"epsilons": "0.1,0.5", "steps": 10, "units": 1, **rules}})
    return result.findings


def test_an_attack_that_drives_the_deciding_unit_flips_the_model_that_decides_through_it() -> None:
    planted, control = _unit_audit(_ThroughUnit(True), units=2), _unit_audit(_ThroughUnit(False), units=2)
    assert [f.status for f in planted] == ["fail", "fail"] and [f.status for f in control] == ["pass", "pass"]
    found = {f.location.component: f.evidence for f in planted}
    assert set(found) == {"hidden:u0", "out:u1"}  # the deciding unit and the logit it writes
    assert found["hidden:u0"]["ablation_flip_rate"] > 0.2 and found["hidden:u0"]["flip_rates"]["component"][0] > 0.3
    for finding in planted + control:
        assert finding.interval["low"] <= finding.value <= finding.interval["high"]
        assert finding.confidence == "certain"
    for finding in control:
        assert finding.evidence["flip_rates"]["component"] == [0.0, 0.0]  # its hidden unit feeds nothing
        assert finding.evidence["flip_rates"]["whole_input"][0] > 0.3  # it is as fragile through its input


def test_declared_components_are_attacked_together() -> None:
    findings = _unit_audit(_ThroughUnit(True), units=0, components="hidden:u0, hidden:u1")
    assert len(findings) == 1 and findings[0].evidence["target"] == "components"
    assert findings[0].evidence["units"] == ["hidden:u0", "hidden:u1"] and findings[0].status == "fail"
    bad = _unit_audit(_ThroughUnit(True), units=0, components="hidden")
    assert [f.status for f in bad] == ["error"] and "must name units" in bad[0].message


def test_the_report_draws_the_unit_attack_curves() -> None:
    from mechaudit.report.figures import weakness_attack_figures
    from mechaudit.report.json_report import result_to_dict

    x = torch.rand(50, 8, generator=torch.Generator().manual_seed(0))
    result = mechaudit.audit(_ThroughUnit(True), x, select=["R305"],
                             rules={"R305": {"epsilons": "0.1,0.5", "steps": 3, "units": 0,
                                             "components": "hidden:u0"}})
    figures = weakness_attack_figures(result_to_dict(result)["findings"][0], "r305")
    assert len(figures) == 1 and "hidden:u0" in figures[0].caption
    assert all(legend in figures[0].svg for legend in ("PGD driving the unit(s)", "PGD on the whole input",
                                                       "noise on the whole input"))


def test_the_compliance_rulebook_gates_on_regions_and_declared_components_not_on_found_units() -> None:
    x = torch.rand(100, 8, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(8)
    mask[0] = 1.0
    fast = {"epsilons": "0.1,0.5", "steps": 5}
    found = mechaudit.audit(_ThroughUnit(True), x, masks={"tag": mask}, rulebook="compliance", select=["R305"],
                            rules={"R305": fast})
    assert [f.evidence["target"] for f in found.findings] == ["region"]  # units = 0 in the compliance rulebook
    declared = mechaudit.audit(_ThroughUnit(True), x, masks={"tag": mask}, rulebook="compliance", select=["R305"],
                               rules={"R305": {**fast, "components": "hidden:u0"}})
    assert [(f.evidence["target"], f.status, f.severity) for f in declared.findings][1] == ("components", "fail",
                                                                                            "error")


def test_nothing_to_attack_is_said_not_judged() -> None:
    x = torch.rand(50, 8, generator=torch.Generator().manual_seed(0))
    result = mechaudit.audit(_ThroughUnit(True), x, rulebook="compliance", select=["R305"])
    assert [(f.status, f.value) for f in result.findings] == [("pass", None)]
    assert result.findings[0].message.startswith("nothing to attack")
