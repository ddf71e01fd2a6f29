"""AtP*'s GradDrop (mechaudit.techniques.graddrop): a unit whose two paths cancel at first order is ranked low by plain
attribution patching and in the top by GradDrop, L202 flags it only with GradDrop on, a control without cancellation
ranks alike, and the formula matches a hand computation on a tiny model."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import mechaudit
from mechaudit.checks import critical_units
from mechaudit.cost import LayerSize, Sizes
from mechaudit.loading import AuditData
from mechaudit.model_view import ModelView, installed
from mechaudit.techniques import atp, graddrop

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.graddrop import CRITICAL, WIDTH, Cancelling, planted_inputs  # noqa: E402


def _scores(cancel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain AtP's and GradDrop's magnitude per fc1 unit for mean ablation of the label margin."""
    model, inputs = Cancelling(cancel).eval(), planted_inputs()
    labels = model(inputs).argmax(-1)
    view = ModelView.discover(model, inputs[:2])
    layer = view.layer("fc1")
    modes = {"mean": ({"fc1": torch.relu(model.fc1(inputs)).mean(0).detach().unsqueeze(-1)}, None)}
    plain = atp.ablation_estimates(view, [layer], inputs, labels, atp.label_margin, modes)["mean"]["fc1"]
    terms = graddrop.graddrop_terms(view, [layer], inputs, labels, atp.label_margin, modes)
    return plain.abs().mean(1), terms.magnitude("mean", layer, plain)


def _exact_margin_change(model: Cancelling, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    """The mean absolute change of the label margin when the planted unit is set to its mean."""
    def to_mean(_module: nn.Module, _args: tuple, out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        out[:, CRITICAL] = mean  # a pre-activation above 0: the unit's activation becomes its mean
        return out
    with torch.no_grad():
        clean = atp.label_margin(model(inputs), labels)
        mean = torch.relu(model.fc1(inputs))[:, CRITICAL].mean()
        handle = model.fc1.register_forward_hook(to_mean)
        try:
            ablated = atp.label_margin(model(inputs), labels)
        finally:
            handle.remove()
    return float((ablated - clean).abs().mean())


def test_graddrop_ranks_the_cancelling_unit_first_where_plain_atp_ranks_it_last() -> None:
    plain, dropped = _scores(cancel=True)
    model, inputs = Cancelling().eval(), planted_inputs()
    assert _exact_margin_change(model, inputs, model(inputs).argmax(-1)) > 0.1  # a large exact effect
    assert float(plain[CRITICAL]) == pytest.approx(0.0, abs=1e-6)  # both paths' gradients cancel
    assert CRITICAL not in plain.argsort(descending=True)[:16].tolist()
    assert dropped.argmax().item() == CRITICAL
    assert float(dropped[CRITICAL]) > 10 * float(dropped[torch.arange(WIDTH) != CRITICAL].max())


def test_control_without_cancellation_ranks_the_unit_first_with_and_without_graddrop() -> None:
    plain, dropped = _scores(cancel=False)
    assert plain.argmax().item() == CRITICAL and dropped.argmax().item() == CRITICAL
    # fc1's only paths run through fc2 (the output) and mid: dropping mid leaves the direct path, so GradDrop is plain
    assert torch.allclose(dropped, plain, rtol=1e-5, atol=1e-7)


class TwoPaths(nn.Module):
    """``pre`` (2x) -> ``a`` (units 2x and 6x) -> ``b`` -> ``c``; the output ``head`` reads ``a0 + a1 + c``, with
    ``b = a0 + 2 a1`` and ``c = -b``: unit a0's paths cancel (gradient 1 - 1), a1's do not (1 - 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.pre, self.a, self.b = nn.Linear(1, 1, bias=False), nn.Linear(1, 2, bias=False), nn.Linear(2, 1, bias=False)
        self.c, self.head = nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            self.pre.weight.fill_(2.0)
            self.a.weight.copy_(torch.tensor([[1.0], [3.0]]))
            self.b.weight.copy_(torch.tensor([[1.0, 2.0]]))
            self.c.weight.fill_(-1.0)
            self.head.weight.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.a(self.pre(x))
        return self.head(a.sum(-1, keepdim=True) + self.c(self.b(a)))


def test_formula_matches_a_hand_computation() -> None:
    """Zero ablation of a_i: plain AtP = -a_i (1 + beta_i gamma); dropping b or c leaves the direct path, -a_i; pre
    runs before a (plain); a's own block is left out: GradDrop(a_i) = mean_x (|plain| + 2 |a_i|) / 3."""
    model, inputs = TwoPaths().eval(), torch.linspace(-1.0, 2.0, 7).unsqueeze(-1)
    view = ModelView.discover(model, inputs[:2])
    layer = view.layer("a")
    assert [b.name for b in graddrop.blocks(view.layers)] == ["pre", "a", "b", "c"]
    modes = {"zero": ({"a": torch.zeros(2, 1)}, None)}

    def output(out: torch.Tensor, _targets: torch.Tensor) -> torch.Tensor:
        return out[:, 0]
    plain = atp.ablation_estimates(view, [layer], inputs, inputs, output, modes)["zero"]["a"]
    terms = graddrop.graddrop_terms(view, [layer], inputs, inputs, output, modes)
    a = torch.cat([2 * inputs, 6 * inputs], 1).T  # (units, samples)
    assert torch.allclose(plain, torch.stack([0 * a[0], a[1]]), atol=1e-6)  # -a (1 + beta gamma): 0 and +a1
    assert terms.passes == 2 and terms.before["a"] == 1 and len(terms.dropped["zero"]["a"]) == 2
    for term in terms.dropped["zero"]["a"]:
        assert torch.allclose(term, -a, atol=1e-6)
    expected = (plain.abs().mean(1) + 2 * a.abs().mean(1)) / 3
    assert torch.allclose(terms.magnitude("zero", layer, plain), expected, atol=1e-6)


def _audit(graddrop_choice: str):
    inputs = planted_inputs()
    model = Cancelling().eval()
    labels = model(inputs).argmax(-1).detach()
    return mechaudit.audit(model, inputs, labels=labels, select=["L202"],
                           rules={"L202": {"max_class_accuracy_drop": 0.25, "screen_top_k": 4, "calibration": 4,
                                           "screen_graddrop": graddrop_choice}})


@pytest.mark.parametrize("choice", ["on", "auto"])
def test_l202_with_graddrop_flags_the_cancelling_unit(choice: str) -> None:
    result = _audit(choice)
    (finding,) = [f for f in result.findings if f.location.layer == "fc1"]
    assert finding.status == "fail" and finding.location.component == f"fc1:u{CRITICAL}"
    screen = finding.evidence["screen"]
    assert screen["scored"] == WIDTH and f"fc1:u{CRITICAL}" in screen["checked"]
    assert screen["graddrop"]["used"] and screen["graddrop"]["passes"] == 2  # mid and mid_out follow fc1


def test_l202_without_graddrop_misses_the_cancelling_unit() -> None:
    result = _audit("off")
    (finding,) = [f for f in result.findings if f.location.layer == "fc1"]
    assert finding.status == "pass"
    screen = finding.evidence["screen"]
    assert f"fc1:u{CRITICAL}" not in screen["checked"]
    assert screen["graddrop"] == {"used": False, "why": "screen_graddrop = off"}


def test_auto_turns_graddrop_off_past_its_pass_bound_and_the_plan_charges_the_passes() -> None:
    assert graddrop.enabled("auto", graddrop.AUTO_PASSES) == (True, f"auto: {graddrop.AUTO_PASSES} extra gradient "
                                                                    f"pass(es) per batch, at most "
                                                                    f"{graddrop.AUTO_PASSES}")
    assert not graddrop.enabled("auto", graddrop.AUTO_PASSES + 1)[0] and not graddrop.enabled("auto", 0)[0]
    layers = (LayerSize("fc1", "linear", WIDTH, WIDTH, True), LayerSize("mid", "linear", 1, 1, True),
              LayerSize("mid_out", "linear", 3, 3, True), LayerSize("fc2", "linear", 3, 3, False))
    sizes = Sizes(samples=600, max_samples=600, batch_size=256, layers=layers, input_values=4, output_values=3)
    assert graddrop.passes([layer.kind for layer in sizes.hidden], [True, False, False]) == 2
    on = critical_units._cost(sizes, critical_units.CriticalUnitsParams(screen_graddrop="on"))
    off = critical_units._cost(sizes, critical_units.CriticalUnitsParams(screen_graddrop="off"))
    assert on.backward - off.backward == 2 * 600


def _patching(graddrop_choice: str):
    clean = planted_inputs(200)
    clean[:, 2] = 0.0  # the planted unit off on the clean inputs, on (h in [2, 3]) on the corrupted ones
    corrupted = clean.clone()
    corrupted[:, 2] = 2 + torch.rand(200, generator=torch.Generator().manual_seed(1))
    model = Cancelling().eval()
    inputs = torch.cat([clean, corrupted])
    data = AuditData(inputs=inputs, labels=model(inputs).argmax(-1).detach(), pairs=(clean, corrupted))
    (finding,) = mechaudit.audit(model, data, select=["L207"],
                                 rules={"L207": {"top_k": 3, "calibration": 3,
                                                 "screen_graddrop": graddrop_choice}}).findings
    return finding


def test_l207_with_graddrop_patches_the_cancelling_unit_and_finds_it_carries_the_behaviour() -> None:
    """Along the whole path from the corrupted to the clean run the planted unit's gradient is 0 (both paths cancel,
    then its ReLU is off), yet patching it alone recovers all of the logit difference."""
    found = _patching("on")
    assert found.location.component == f"fc1:u{CRITICAL}" and found.value > 0.99
    assert found.evidence["screen"]["graddrop"]["used"]
    missed = _patching("off")
    assert f"fc1:u{CRITICAL}" not in missed.evidence["screen"]["checked"] and missed.value < 0.01
    assert not missed.evidence["screen"]["graddrop"]["used"]


class KeywordBlock(nn.Module):
    """A block called with its input as a keyword (as Hugging Face attention modules often are)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(3, 3)

    def forward(self, *, hidden: torch.Tensor, scale: tuple[torch.Tensor, float]) -> torch.Tensor:
        return self.inner(hidden) * scale[0] * scale[1]


def test_dropping_a_block_detaches_its_keyword_and_nested_inputs_and_leaves_the_skip_path() -> None:
    block, start = KeywordBlock(), torch.ones(2, 3, requires_grad=True)
    factor = start.sum(1, keepdim=True)
    with installed([graddrop._detach_inputs(block)]):
        out = start + block(hidden=start * 2, scale=(factor, 2.0))
    out.sum().backward()
    assert torch.equal(start.grad, torch.ones(2, 3))  # the skip path alone
    assert block.inner.weight.grad is not None  # the block's own parameters still get their gradient
