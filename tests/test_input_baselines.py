"""The input baseline shared by L201, L204 and R303 (mechaudit.techniques.baselines): a region "removed" by a
literal zero on inputs whose 0 lies outside the data flips predictions the model never made on the data; the
audit data's mean does not, yet still flips the predictions of a model that reads the region's content."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mechaudit
from mechaudit.techniques.baselines import Baseline, blurred


class Region(nn.Module):
    """Two classes from feature 1; feature 0 (the region, about 5 on the data) enters as ``reads`` says:
    ``"off-distribution"``: only below 2, never reached on the data (a zero baseline reaches it);
    ``"content"``: its deviation from 5, which the model really uses."""

    def __init__(self, reads: str) -> None:
        super().__init__()
        self.reads = reads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        region = 10 * torch.relu(2 - x[:, 0]) if self.reads == "off-distribution" else 4 * (x[:, 0] - 5)
        return torch.stack([x[:, 1] + region, torch.zeros_like(region)], 1)


def _flip_rate(reads: str, baseline: str) -> tuple[float, dict]:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.stack([5 + 0.5 * torch.randn(400, generator=generator), torch.randn(400, generator=generator),
                          torch.randn(400, generator=generator)], 1)
    model = Region(reads)
    labels = model(inputs).argmax(-1)
    result = mechaudit.audit(model, inputs, labels=labels, masks={"region": torch.tensor([1.0, 0.0, 0.0])},
                             select=["L201"], rules={"L201": {"baseline": baseline, "what_if": False}})
    (flips,) = [f for f in result.findings if f.metric == "flip_rate"]
    return flips.value, flips.evidence


def test_a_mean_baseline_removes_the_flips_a_zero_baseline_causes_off_the_data() -> None:
    zero, evidence = _flip_rate("off-distribution", "zero")
    mean, mean_evidence = _flip_rate("off-distribution", "mean")
    assert zero > 0.3 and mean == 0.0  # zero puts feature 0 where the data never is
    assert evidence["baseline"]["kind"] == "zero"
    assert mean_evidence["baseline"] == {"kind": "mean", "description": "the audit data's mean per feature"}


def test_control_a_mean_baseline_still_flips_a_model_that_reads_the_regions_content() -> None:
    zero, _ = _flip_rate("content", "zero")
    mean, _ = _flip_rate("content", "mean")
    assert zero > 0.3 and mean > 0.2  # far above L201's max_flip_rate (0.05) either way


def test_baselines_fill_what_their_docs_say() -> None:
    images = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0)) + torch.tensor([0, 1, 2]).view(3, 1, 1)
    mean = Baseline("mean", reference=images).fill(images[:2])
    assert mean.shape == (2, 3, 8, 8) and torch.allclose(mean[1, 2], torch.full((8, 8), float(images[:, 2].mean())))
    assert torch.equal(Baseline("constant", value=-0.5).fill(images[:1]), torch.full((1, 3, 8, 8), -0.5))
    flat = torch.full((1, 1, 9, 9), 3.0)
    assert torch.allclose(blurred(flat, 2.0), flat)  # a blur keeps a constant image
    spot = torch.zeros(1, 1, 9, 9)
    spot[0, 0, 4, 4] = 1.0
    smoothed = blurred(spot, 1.0)
    assert 0.0 < float(smoothed[0, 0, 4, 4]) < 1.0 and abs(float(smoothed.sum()) - 1.0) < 1e-5
    drawn = Baseline("sample", reference=images, seed=3).fill(images[:4])
    assert all(any(torch.equal(row, image) for image in images) for row in drawn)
    mask = torch.zeros(3, 8, 8)
    mask[:, :2] = 1.0
    removed = Baseline("mean", reference=images).remove(images[:1], mask)
    assert torch.equal(removed[0, :, 2:], images[0, :, 2:]) and torch.allclose(removed[0, :, :2], mean[0, :, :2])
    with pytest.raises(ValueError, match="needs spatial inputs"):
        Baseline("blur", reference=torch.zeros(4, 3))


def _planted(tmp_path, baseline: str):
    import numpy as np
    from conftest import write_project
    from fixtures.planted_circuit import planted, planted_data

    from mechaudit.engine import run_audit
    from mechaudit.spec import load_spec

    x = planted_data()
    arrays = {"inputs": x.numpy(), "labels": planted().eval()(x).argmax(1).numpy(),
              "region": np.array([1, 1, 0, 0, 0, 0], np.float32)}
    overrides = "".join(f'[audit.rules.{rule}]\nbaseline = "{baseline}"\n' for rule in ("R303", "L204"))
    project = write_project(tmp_path / baseline, arrays=arrays, data_table='labels = "labels"\nmasks = { region = '
                            '"region" }', model_table='factory = "fixtures.planted_circuit:planted"',
                            extra='[behaviour]\nkind = "class_logit"\ntarget = "0"\n[audit]\nselect = ["R303", '
                                  f'"L204"]\n{overrides}')
    return {f.rule_id: f for f in run_audit(load_spec(project.spec)).findings}


def test_r303_and_l204_intervene_with_the_chosen_baseline_and_say_which(tmp_path) -> None:
    zero, mean = _planted(tmp_path, "zero"), _planted(tmp_path, "mean")
    assert zero["R303"].evidence["baseline"]["kind"] == "zero" and mean["R303"].evidence["baseline"]["kind"] == "mean"
    assert mean["L204"].evidence["baseline"]["description"] == "the audit data's mean per feature"
    before = [run["R303"].evidence["what_if_units"]["before"]["accuracy_region_removed"] for run in (zero, mean)]
    assert before[0] != before[1]  # the region removed differently
