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


@pytest.mark.slow  # PGD on 256 digits at six budgets: seconds alone
def test_digits_watermark_is_attackable_and_the_control_is_not(cli, tmp_path) -> None:
    import json

    values = {}
    for example in ("digits", "digits-control"):
        out = tmp_path / example
        cli("audit", "--example", example, "--select", "R305", "--out", out, "-q")
        finding = json.loads((out / "findings.json").read_text())["findings"][0]
        values[example] = (finding["status"], finding["value"])
    assert values["digits"][0] == "fail" and values["digits"][1] > 0.15
    assert values["digits-control"][0] == "pass" and values["digits-control"][1] < 0.06


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
    assert len(figures) == 1 and figures[0].svg.count("<path") >= 3 and "input:tag" in figures[0].caption
