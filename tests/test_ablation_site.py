"""R302 and R304 ablate a unit where the next layer reads it (after its ReLU), the tensor their node scores patch,
and agree with that exact ablation done by hand. Planted: a unit off (far below its kink) on 90% of the samples and
strongly on for the rest; its mean pre-activation is below the kink, so ablating before the ReLU writes 0, not the
mean the next layer reads (0.1 * 100): ablated there, it loses 0.43 of the behaviour (no single point of failure),
where the exact post-ReLU ablation loses 0.74. Control: the same unit weakly on (10 instead of 100) beside five
units that share the rest: no single point of failure (largest loss 0.45)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mechaudit

N, UNITS = 256, 6


class SixUnits(nn.Module):
    """fc1 copies its six inputs; the logit of class 0 is the sum of the six ReLU outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.out = nn.Linear(UNITS, UNITS), nn.Linear(UNITS, 2)
        with torch.no_grad():
            self.fc1.weight.copy_(torch.eye(UNITS))
            self.fc1.bias.zero_()
            self.out.weight.zero_()
            self.out.weight[0] = 1.0
            self.out.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.fc1(x)))


def _inputs(on: float) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    x = torch.empty(N, UNITS)
    x[:, 0] = torch.where(torch.arange(N) % 10 == 0, torch.tensor(on), torch.tensor(-1000.0))  # fc1:u0
    x[:, 1:] = 50 + 8 * torch.randn(N, UNITS - 1, generator=generator)                         # always on
    return x


@torch.no_grad()
def _by_hand(model: SixUnits, x: torch.Tensor, keep: set[int] | None = None, before_relu: bool = False):
    """Exact losses (R304) of each unit mean-ablated alone after its ReLU (or before it), and the faithfulness of
    the units ``keep`` (R302), per sample as the rules define them."""
    z = model.fc1(x)
    r = torch.relu(z)
    means = torch.relu(z.mean(0)) if before_relu else r.mean(0)

    def m(ablate: list[int]) -> torch.Tensor:
        ablated = r.clone()
        ablated[:, ablate] = means[ablate]
        return model.out(ablated)[:, 0]
    intact, empty = m([]), m(list(range(UNITS)))
    span = (empty - intact).abs().mean()
    losses = [float((m([u]) - intact).abs().mean() / span) for u in range(UNITS)]
    rest = [u for u in range(UNITS) if u not in (keep or set())]
    return losses, float(1 - (m(rest) - intact).abs().mean() / span)


def _audit(on: float, rule: str):
    model = SixUnits().eval()
    x = _inputs(on)
    result = mechaudit.audit(model, x, labels=torch.zeros(N, dtype=torch.long), select=[rule],
                             behaviour={"kind": "class_logit", "target": "0"})
    return model, x, [f for f in result.findings if f.rule_id == rule]


def test_r304_finds_the_unit_that_is_strongly_on_for_a_tenth_of_the_samples() -> None:
    model, x, findings = _audit(100.0, "R304")
    exact, _ = _by_hand(model, x)
    before, _ = _by_hand(model, x, before_relu=True)
    assert before[0] < 0.5 < exact[0]                      # the planted gap: pre-ReLU ablation missed it
    [finding] = findings
    assert finding.status == "fail" and finding.location.component == "fc1:u0"
    reported = {row["component"]: row["behaviour_lost"] for row in finding.evidence["units"]}
    for u in range(UNITS):
        assert reported[f"fc1:u{u}"] == pytest.approx(exact[u], rel=1e-4, abs=1e-6)


def test_control_r304_passes_when_the_unit_is_weakly_on() -> None:
    model, x, findings = _audit(10.0, "R304")
    exact, _ = _by_hand(model, x)
    [finding] = findings
    assert finding.status == "pass"
    reported = {row["component"]: row["behaviour_lost"] for row in finding.evidence["units"]}
    for u in range(UNITS):
        assert reported[f"fc1:u{u}"] == pytest.approx(exact[u], rel=1e-4, abs=1e-6)
    assert max(exact) < 0.5


@pytest.mark.parametrize("on", [100.0, 10.0])
def test_r302_faithfulness_is_that_of_the_exact_post_relu_ablation(on: float) -> None:
    model, x, findings = _audit(on, "R302")
    [finding] = findings
    circuit = {int(node.split(":u")[1]) for node in finding.evidence["circuit"]}
    _, exact = _by_hand(model, x, keep=circuit)
    assert finding.evidence["faithfulness"] == pytest.approx(exact, rel=1e-4, abs=1e-6)


class Bypass(nn.Module):
    """fc2 reads fc1's ReLU output split by unit, but the logits also read it directly (a second path past fc2,
    as a U-Net skip): patching fc2's input would leave that path clean, so fc1's units are ablated at their
    output (before the ReLU, the fallback) and every path sees it. ``bypass = False``: the control, fc2 alone."""

    def __init__(self, bypass: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2, self.out = nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 2)
        self.bypass = bypass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x))
        logits = self.out(torch.relu(self.fc2(h)))
        return logits + 2.0 * h[:, :2] if self.bypass else logits


@torch.no_grad()
def _bypass_by_hand(model: Bypass, x: torch.Tensor, before_relu: bool) -> list[float]:
    """R304's loss of each fc1 unit ablated alone with fc2's units intact: at its pre-activation (every path)
    or at its ReLU output (every path too: the direct one reads the same tensor)."""
    z = model.fc1(x)
    means = z.mean(0) if before_relu else torch.relu(z).mean(0)
    z2 = model.fc2(torch.relu(z))

    def m(ablate: list[int]) -> torch.Tensor:
        h = torch.relu(z).clone()
        if before_relu:
            h[:, ablate] = torch.relu(means[ablate])
        else:
            h[:, ablate] = means[ablate]
        fc2 = model.fc2(h)
        logits = model.out(torch.relu(fc2)) + (2.0 * h[:, :2] if model.bypass else 0.0)
        return logits[:, 0]
    intact = m([])
    read_by_out = torch.relu(z2).mean(0)  # every hidden unit ablated: fc2's where `out` reads them (after the ReLU)
    h_empty = (torch.relu(means) if before_relu else means).expand_as(z)
    empty = model.out(read_by_out.expand_as(z2)) + (2.0 * h_empty[:, :2] if model.bypass else 0.0)
    span = (empty[:, 0] - intact).abs().mean()
    return [float((m([u]) - intact).abs().mean() / span) for u in range(3)]


@pytest.mark.parametrize("bypass", [True, False])
def test_a_unit_read_past_the_next_layer_is_ablated_on_every_path(bypass: bool) -> None:
    from mechaudit.model_view import ModelView
    from mechaudit.techniques.circuits import edge_attribution, target_logit

    model = Bypass(bypass).eval()
    x = torch.randn(N, 3, generator=torch.Generator().manual_seed(1))
    view = ModelView.discover(model, x[:2])
    scores = edge_attribution(view, x, torch.zeros(N, dtype=torch.long), target_logit)
    assert ("fc1" in scores.read_by) is not bypass
    result = mechaudit.audit(model, x, labels=torch.zeros(N, dtype=torch.long), select=["R304"],
                             behaviour={"kind": "class_logit", "target": "0"})
    reported = {row["component"]: row["behaviour_lost"] for f in result.findings for row in f.evidence["units"]}
    exact = _bypass_by_hand(model, x, before_relu=bypass)
    for u in range(3):
        assert reported[f"fc1:u{u}"] == pytest.approx(exact[u], rel=1e-4, abs=1e-6)


@pytest.mark.slow  # one R304 audit of the embedded digits CNN
def test_r304_on_digits_equals_exact_post_relu_ablation_of_every_unit() -> None:
    """Each of the 56 units of `digits` (two convolutions, a max-pool, a Linear layer): R304's loss equals the
    exact mean ablation, done by hand, of what the next layer reads from it (ReLU output, after the pool for the
    second convolution); ablating the Linear/Conv outputs instead differed by up to 0.06."""
    import numpy as np
    from report_cases import weights_present
    from safetensors.torch import load_file

    from mechaudit.engine import run_audit
    from mechaudit.examples import example_spec
    from mechaudit.examples.digits.model import build
    from mechaudit.spec import Options, load_spec

    if not weights_present("digits"):
        pytest.skip("the digits example has no weights")
    folder = example_spec("digits").parent
    model = build()
    model.load_state_dict(load_file(str(folder / "digits.safetensors")))
    model.eval()
    audit_inputs = torch.from_numpy(np.load(folder / "audit_data.npz")["inputs"]).float()
    x = torch.from_numpy(np.load(folder / "localization.npz")["stamped"]).float()  # the behaviour's samples
    conv1, conv2, pool, fc, out = (model.features[0], model.features[2], model.features[4], model.classifier[0],
                                   model.classifier[2])
    with torch.no_grad():
        a1 = torch.relu(conv1(audit_inputs))
        a2 = pool(torch.relu(conv2(a1)))
        means = (a1.mean(0), a2.mean(0), torch.relu(fc(a2.flatten(1))).mean(0))

        def logit(ablate: set[tuple[int, int]]) -> torch.Tensor:
            reads = [torch.relu(conv1(x))]
            for stage, module in enumerate((lambda h: pool(torch.relu(conv2(h))), lambda h: torch.relu(fc(h.flatten(1))),
                                            None)):
                for level, unit in ablate:
                    if level == stage:
                        reads[-1][:, unit] = means[stage][unit]
                if module is not None:
                    reads.append(module(reads[-1]))
            return out(reads[-1])[:, 7]
        units = [(0, u) for u in range(8)] + [(1, u) for u in range(16)] + [(2, u) for u in range(32)]
        names = [f"features.0:ch{u}" for u in range(8)] + [f"features.2:ch{u}" for u in range(16)] + \
            [f"classifier.0:u{u}" for u in range(32)]
        intact = logit(set())
        span = (logit(set(units)) - intact).abs().mean()
        exact = {name: float((logit({unit}) - intact).abs().mean() / span) for name, unit in zip(names, units)}
    spec = load_spec(example_spec("digits"), base=Options(select=("R304",),
                                                          rules=(("R304", "test", {"candidates": 56}),)))
    reported = {row["component"]: row["behaviour_lost"] for f in run_audit(spec).findings
                for row in f.evidence["units"]}
    assert set(reported) == set(exact)
    for name, value in exact.items():
        assert reported[name] == pytest.approx(value, abs=1e-5)


def test_read_site_means_come_from_the_statistics_pass_with_no_pass_of_their_own() -> None:
    """The means written at the read sites are the reader's mean input over all the audit data, recorded in the
    audit's one (sharded) statistics pass: once that pass and the circuit scores (on 32 of the 256 samples) are
    there, the read sites run no forward pass."""
    from mechaudit.checks.circuit_common import ablation_sites, circuit_scores
    from mechaudit.context import AuditContext
    from mechaudit.loading import AuditData
    from mechaudit.model_view import ModelView
    from mechaudit.spec import BehaviourSpec

    model, x = SixUnits().eval(), _inputs(100.0)
    context = AuditContext(ModelView.discover(model, x[:2]), AuditData(x, torch.zeros(N, dtype=torch.long)),
                           "classification", (), torch.device("cpu"), 64, N, 0,
                           behaviour=BehaviourSpec(kind="class_logit", target="0"))
    circuit_scores(context, 32)
    assert context.unit_stats
    forwards: list[int] = []
    handle = model.register_forward_pre_hook(lambda _module, args: forwards.append(args[0].shape[0]))
    try:
        sites = ablation_sites(context, 32)
    finally:
        handle.remove()
    assert forwards == []
    with torch.no_grad():
        exact = torch.relu(model.fc1(x)).double().mean(0)
    assert torch.allclose(sites["fc1"].values.double().flatten(), exact, rtol=1e-6)
