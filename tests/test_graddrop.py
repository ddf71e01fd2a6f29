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
from mechaudit.model_view import ModelView, installed, units_view
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
    same, terms, _ = _site_screen(view, [layer], inputs, labels, atp.label_margin, modes)
    assert torch.allclose(same["mean"]["fc1"], plain, atol=1e-6)  # the same estimator as plain AtP's
    return plain.abs().mean(1), terms.magnitude("mean", layer, plain)


def _site_screen(view, layers, inputs, targets, metric, modes, sites=None, steps=1):
    """L202's screen with GradDrop on: (plain estimates, terms, evidence)."""
    return graddrop.site_screen("on", view, layers, inputs, targets, metric, modes, sites or {}, steps, 256,
                                torch.device("cpu"))


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
    """Zero ablation of a_i: plain AtP = -a_i (1 + beta_i gamma); dropping b or c leaves the direct path, -a_i (the
    same path cut twice: counted once); pre runs before a (plain); a's own block is left out: GradDrop(a_i) =
    mean_x (|plain| + |a_i|) / 2."""
    model, inputs = TwoPaths().eval(), torch.linspace(-1.0, 2.0, 7).unsqueeze(-1)
    view = ModelView.discover(model, inputs[:2])
    layer = view.layer("a")
    assert [b.name for b in graddrop.blocks(view.layers)] == ["pre", "a", "b", "c"]
    modes = {"zero": ({"a": torch.zeros(2, 1)}, None)}

    def output(out: torch.Tensor, _targets: torch.Tensor) -> torch.Tensor:
        return out[:, 0]
    plain = atp.ablation_estimates(view, [layer], inputs, inputs, output, modes)["zero"]["a"]
    _, terms, _ = _site_screen(view, [layer], inputs, inputs, output, modes)
    a = torch.cat([2 * inputs, 6 * inputs], 1).T  # (units, samples)
    assert torch.allclose(plain, torch.stack([0 * a[0], a[1]]), atol=1e-6)  # -a (1 + beta gamma): 0 and +a1
    assert terms.passes == 2 and terms.before["a"] == 1 and len(terms.dropped["zero"]["a"]) == 1
    assert terms.same == {"a": 1} and terms.evidence()["left_out_as_same"] == {"a": 1}
    assert torch.allclose(terms.dropped["zero"]["a"][0], -a, atol=1e-6)
    expected = (plain.abs().mean(1) + a.abs().mean(1)) / 2
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
    gpt2 = [f"transformer.h.{i}.{part}" for i in range(2)
            for part in ("attn.c_attn", "attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    kinds = ["linear", "heads", "linear", "linear", "linear"] * 2
    assert graddrop.passes(kinds, [True] * 10) == 9  # without names: every layer a block (an upper bound)
    assert graddrop.passes(kinds, [True] * 10, gpt2) == 3  # attention and MLP one block each, as the rule runs
    assert graddrop.passes(kinds, [True] * 10, gpt2, merged=False) == 5  # c_fc and c_proj apart: the probe refused
    assert graddrop.charged("on", kinds, [True] * 10, gpt2) == 5 and graddrop.charged("auto", kinds, [True] * 10,
                                                                                      gpt2) == 4
    assert graddrop.charged("off", kinds, [True] * 10, gpt2) == 0
    wrapped = ["net.fc1", "net.mid", "net.mid_out"]  # the names merge them all; the probe keeps them apart (2 passes)
    assert graddrop.passes(["linear"] * 3, [True, False, False], wrapped) == 0
    assert graddrop.charged("auto", ["linear"] * 3, [True, False, False], wrapped) == 2
    assert graddrop.passes(["conv", "conv", "linear"], [True] * 3, ["features.0", "features.3", "classifier.0"]) == 2
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


class SkipAttention(nn.Module):
    """Two-head self-attention whose residual skip is inside the module (as BERT's ``LayerNorm(dense(ctx) + x)``)."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.num_heads = 2
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(width, width) for _ in range(4))

    def context(self, x: torch.Tensor) -> torch.Tensor:
        b, t, w = x.shape
        q, k, v = (p(x).view(b, t, 2, w // 2).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        weights = torch.softmax(q @ k.transpose(-1, -2) / (w // 2) ** 0.5, dim=-1)
        return (weights @ v).transpose(1, 2).reshape(b, t, w)

    def forward(self, x: torch.Tensor, drop: bool = False) -> torch.Tensor:
        context = self.context(x)
        return x + self.o_proj(context.detach() if drop else context)


class TinyTransformer(nn.Module):
    """embed -> attention (skip inside) -> MLP (skip outside: up, ReLU, down) -> out, read at the last token."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.attn = nn.Linear(3, 4), SkipAttention()
        self.up, self.down, self.out = nn.Linear(4, 8), nn.Linear(8, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor, drop: str = "") -> torch.Tensor:
        h = self.attn(self.embed(x), drop=drop == "attn")
        mlp = self.down(torch.relu(self.up(h)))
        return self.out((h + (mlp.detach() if drop == "mlp" else mlp))[:, -1])


def _first_order(model: TinyTransformer, x: torch.Tensor, drop: str) -> torch.Tensor:
    """By hand: embed's zero-ablation estimate per unit and sample with ``drop``'s write detached."""
    h = model.embed(x).detach().requires_grad_(True)
    attended = model.attn(h, drop=drop == "attn")
    mlp = model.down(torch.relu(model.up(attended)))
    out = model.out((attended + (mlp.detach() if drop == "mlp" else mlp))[:, -1])
    out[:, 0].sum().backward()
    return (-h.detach() * h.grad).sum(1).T  # (units, samples): zero ablation, summed over tokens


def test_transformer_blocks_merge_the_attention_projections_and_keep_the_inner_skip() -> None:
    model, x = TinyTransformer().eval(), torch.randn(5, 3, 3, generator=torch.Generator().manual_seed(1))
    view = ModelView.discover(model, x[:2])
    found = graddrop.blocks(view.layers)
    assert [b.name for b in found] == ["embed", "attn", "up", "down"]  # q/k/v/o inside attn: one block
    assert {"attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj"} <= found[1].members
    layers = [view.layer("embed"), view.layer("attn")]
    clean, _ = atp.activations_and_gradients(view, layers, x, x, lambda out, _t: out[:, 0])
    modes = {"zero": ({layer.name: torch.zeros_like(units_view(clean[layer.name], layer)[0]) for layer in layers},
                      None)}

    def output(out: torch.Tensor, _targets: torch.Tensor) -> torch.Tensor:
        return out[:, 0]
    plain, terms, evidence = _site_screen(view, layers, x, x, output, modes)
    assert evidence["passes"] == 3 and evidence["done"] == "3 blocks"
    by_block = dict(zip(["attn", "up"], terms.dropped["zero"]["embed"]))
    assert len(terms.dropped["zero"]["embed"]) == 2 and terms.before["embed"] == 0
    # up and down, top-level Linears, are two blocks cutting one path: down's term is up's, counted once
    assert evidence["left_out_as_same"] == {"embed": 1, "attn": 1}
    # dropping the attention's write: the skip inside it still carries embed's effect (not 0), exactly as by hand
    assert by_block["attn"].abs().max() > 1e-3
    assert torch.allclose(by_block["attn"], _first_order(model, x, "attn"), atol=1e-5)
    assert torch.allclose(by_block["up"], _first_order(model, x, "mlp"), atol=1e-5)
    assert torch.allclose(plain["zero"]["embed"], _first_order(model, x, ""), atol=1e-5)
    # the heads inside the dropped MLP's upstream keep their gradient: their terms past the MLP are not 0
    heads_terms = terms.dropped["zero"]["attn"]
    assert len(heads_terms) == 1 and all(t.abs().max() > 1e-4 for t in heads_terms)
    for module in model.modules():  # every detach hook removed
        assert not module._forward_pre_hooks and not module._forward_hooks


def test_dropping_removes_its_hook_after_an_exception() -> None:
    model, x = TinyTransformer().eval(), torch.randn(2, 3, 3)
    view = ModelView.discover(model, x)
    for block in graddrop.blocks(view.layers):
        with pytest.raises(RuntimeError), graddrop.dropping(view, block):
            raise RuntimeError("inside")
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


class Sequential3(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.fc1, self.fc2, self.fc3 = nn.Linear(3, 6), nn.Linear(6, 5), nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def test_a_block_that_reads_a_unit_at_its_input_cuts_it_whatever_the_hook_order() -> None:
    """fc1 moved at fc2's input (after its ReLU); dropping fc2 (on every path) must give 0 however the hooks are
    registered, and a sequential net's GradDrop must stay plain AtP. A detach of fc2's *input* registered before the
    site's hook would hand the site a fresh leaf and give plain AtP instead (checked: the trap is real)."""
    from mechaudit.techniques.node_ablation import Reader
    from mechaudit.techniques.path_attribution import MovedSite, moved_sites

    model, x = Sequential3().eval(), torch.randn(16, 3, generator=torch.Generator().manual_seed(3))
    view = ModelView.discover(model, x[:2])
    fc1, fc2 = view.layer("fc1"), view.layer("fc2")
    block = next(b for b in graddrop.blocks(view.layers) if b.name == "fc2")

    def site_grad(first: str) -> torch.Tensor | None:
        site = MovedSite(fc1, Reader(fc1, fc2))
        detach_input = lambda _m, args: (args[0].detach(),)  # noqa: E731 - the trap's hook
        contexts = {"drop": lambda: graddrop.dropping(view, block),
                    "input": lambda: installed([model.fc2.register_forward_pre_hook(detach_input)]),
                    "site": lambda: moved_sites(view, [site], None)}
        with contexts[first](), contexts["site" if first != "site" else "drop"](), torch.enable_grad():
            total = model(x)[:, 0].sum()
            return torch.autograd.grad(total, site.moved, allow_unused=True)[0] if total.requires_grad else None
    for first in ("drop", "site"):
        grad = site_grad(first)
        assert grad is None or not grad.any()
    trap = site_grad("input")
    assert trap is not None and trap.abs().max() > 1e-4  # the input detach registered first does not cut it
    modes = {"zero": ({"fc1": torch.zeros(6, 1)}, None)}
    plain, terms, evidence = _site_screen(view, [fc1], x, x, lambda out, _t: out[:, 0], modes,
                                          sites={"fc1": Reader(fc1, fc2)})
    assert terms.zero["fc1"] == 1 and not terms.dropped["zero"]["fc1"]  # fc2 on every path: left out
    assert torch.equal(terms.ranked("zero", fc1, plain["zero"]["fc1"], lambda e: e.abs().mean(1)),
                       plain["zero"]["fc1"].abs().mean(1))


def test_l207_cost_charges_the_path_screen_once_more_per_block() -> None:
    from mechaudit.checks import patching

    layers = tuple(LayerSize(f"l{i}", "linear", 200, 200, True) for i in range(3)) + (
        LayerSize("out", "linear", 3, 3, False),)
    sizes = Sizes(samples=100, max_samples=100, batch_size=50, layers=layers, input_values=4, output_values=3)
    for steps in (1, 3):
        on = patching._cost(sizes, patching.PatchingParams(screen_graddrop="on", screen_steps=steps))
        off = patching._cost(sizes, patching.PatchingParams(screen_graddrop="off", screen_steps=steps))
        n = sizes.n(patching.PatchingParams().samples)
        assert on.backward - off.backward == pytest.approx(2 * steps * n)  # two blocks after the first layer
        assert on.forward - off.forward == pytest.approx(2 * steps * n + (2 * n if steps == 1 else 0))


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(4, 8), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x)))


class MlpNet(nn.Module):
    """A sequential stack (not one block), a residual MLP module (one block written by ``down``)."""

    def __init__(self) -> None:
        super().__init__()
        self.stack, self.mlp, self.out = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 4)), Mlp(), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stack(x)
        return self.out(h + self.mlp(h))


def test_an_mlp_module_is_one_block_written_by_its_last_linear_and_a_sequential_is_not() -> None:
    model, x = MlpNet().eval(), torch.randn(6, 3)
    view = ModelView.discover(model, x[:2])
    found = graddrop.blocks(view.layers, view, x[:2])
    assert [(b.name, sorted(b.members)) for b in found] == [
        ("stack.0", ["stack.0"]), ("stack.1", ["stack.1"]), ("mlp.down", ["mlp.down", "mlp.up"])]
    assert len(graddrop.blocks(view.layers)) == 4  # without a probe: nothing verified, nothing merged
    layer = view.layer("stack.1")
    modes = {"zero": ({"stack.1": torch.zeros(4, 1)}, None)}
    _, terms, evidence = _site_screen(view, [layer], x, x, lambda out, _t: out[:, 0], modes)
    assert evidence["passes"] == 1  # the MLP once, not twice

    h = model.stack(x).detach().requires_grad_(True)
    model.out(h + model.mlp(h).detach())[:, 0].sum().backward()
    (term,) = terms.dropped["zero"]["stack.1"]
    assert torch.allclose(term, (-h.detach() * h.grad).T, atol=1e-6)  # the skip alone


def test_graddrop_stops_where_the_time_budget_ends_and_says_how_many_blocks_ran(monkeypatch) -> None:
    from mechaudit import deadline

    now = [0.0]
    monkeypatch.setattr(deadline, "clock", lambda: now[0])
    model, x = TinyTransformer().eval(), torch.randn(2, 3, 3)
    view = ModelView.discover(model, x)
    layers = [view.layer("embed"), view.layer("attn")]

    def estimate() -> dict[str, torch.Tensor]:
        now[0] += 1.0  # each path screen takes a second
        return {layer.name: torch.full((layer.size,), now[0]) for layer in layers}  # a term per block
    with deadline.within(8.0):  # 6.8 s before the reserve, half for GradDrop: a 1 s block (x1.5 safety) fits twice
        terms, evidence = graddrop.path_screen("on", view, layers, estimate, 1.0)
    assert evidence["passes"] == 2 and evidence["planned"] == 3 and evidence["done"] == "2 of 3 blocks"
    assert len(terms.dropped["patch"]["embed"]) == 2  # the mean is over the blocks done
    _, unbounded = graddrop.path_screen("on", view, layers, estimate, 1.0)
    assert unbounded["done"] == "3 blocks"


@pytest.mark.parametrize("time_left", [False, True])
def test_l202_graddrop_on_one_batch_runs_no_drop_without_time_and_counts_what_ran(monkeypatch, time_left) -> None:
    from mechaudit import deadline
    from mechaudit.techniques import site_ablation

    now = [0.0]
    monkeypatch.setattr(deadline, "clock", lambda: now[0])
    gradient_passes = [0]
    original = site_ablation._site_grads

    def counted(*args, **kwargs):
        gradient_passes[0] += 1
        return original(*args, **kwargs)
    monkeypatch.setattr(site_ablation, "_site_grads", counted)
    model, inputs = Cancelling().eval(), planted_inputs()  # one batch of 600 samples
    view = ModelView.discover(model, inputs[:2])
    layer = view.layer("fc1")
    modes = {"mean": ({"fc1": torch.relu(model.fc1(inputs)).mean(0).detach().unsqueeze(-1)}, None)}
    with deadline.within(100.0):
        if not time_left:
            now[0] = 90.0  # past the reserve: nothing left
        _, terms, evidence = graddrop.site_screen("on", view, [layer], inputs, model(inputs).argmax(-1),
                                                  atp.label_margin, modes, {}, 1, 1024, torch.device("cpu"))
    ran = 2 if time_left else 0  # mid and mid_out run after fc1
    assert gradient_passes[0] == 1 + ran  # the plain pass and one per block run
    assert evidence["passes"] == ran and evidence["planned"] == 2
    assert evidence["done"] == ("2 blocks" if time_left else "0 of 2 blocks")


class Wrapped(nn.Module):
    """A model held by a wrapper (``self.net = model``, as Lightning modules do)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.net = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.mark.parametrize("cancel", [True, False])
def test_a_wrapped_model_keeps_its_linears_as_blocks_and_graddrop_still_ranks_the_planted_unit_first(cancel) -> None:
    model, inputs = Wrapped(Cancelling(cancel)).eval(), planted_inputs()
    view = ModelView.discover(model, inputs[:2])
    found = graddrop.blocks(view.layers, view, inputs[:2])
    assert [(b.name, sorted(b.members)) for b in found] == [
        ("net.fc1", ["net.fc1"]), ("net.mid", ["net.mid"]), ("net.mid_out", ["net.mid_out"])]  # fc1 reaches fc2
    layer = view.layer("net.fc1")
    modes = {"mean": ({"net.fc1": torch.relu(model.net.fc1(inputs)).mean(0).detach().unsqueeze(-1)}, None)}
    labels = model(inputs).argmax(-1)
    plain, terms, evidence = graddrop.site_screen("auto", view, [layer], inputs, labels, atp.label_margin, modes, {},
                                                  1, 256, torch.device("cpu"))
    assert evidence["used"] and evidence["passes"] == 2  # not "auto: no block runs after a screened layer"
    dropped = terms.magnitude("mean", layer, plain["mean"]["net.fc1"])
    assert dropped.argmax().item() == CRITICAL


class CustomBlock(nn.Module):
    """A transformer block holding its projections directly: q, k, v, o (attention, not discovered as heads here:
    one head over the whole width) and fc1, fc2 (the MLP), with both residual skips."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(width, width) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(width, 8), nn.Linear(8, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.q(x) @ self.k(x).transpose(-1, -2), dim=-1)
        h = x + self.o(weights @ self.v(x))
        return h + self.fc2(torch.relu(self.fc1(h)))


class CustomNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.block, self.head = nn.Linear(3, 4), CustomBlock(), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.embed(x))[:, -1])


def test_a_block_holding_attention_and_mlp_projections_directly_is_not_merged_into_one() -> None:
    model, x = CustomNet().eval(), torch.randn(4, 3, 3)
    view = ModelView.discover(model, x[:2])
    names = [b.name for b in graddrop.blocks(view.layers, view, x[:2])]
    assert "block.fc2" in names and "block.o" in names  # the MLP's write is not the only way out of the attention
    assert names == [b.name for b in graddrop.blocks(view.layers)]  # nothing verified to merge: as without a probe


def test_tiny_gpt2_has_two_blocks_per_layer_as_the_cost_model_counts() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50, n_positions=8, bos_token_id=0,
                                     eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    tokens = torch.randint(0, 50, (2, 6))
    view = ModelView.discover(model, tokens)
    found = graddrop.blocks(view.layers, view, tokens)
    for i in range(2):
        prefix = f"transformer.h.{i}"
        heads = next(b for b in found if b.layer.kind == "heads" and b.name.startswith(prefix))
        assert {f"{prefix}.attn.c_attn", f"{prefix}.attn.c_proj"} <= heads.members
        mlp = next(b for b in found if b.name == f"{prefix}.mlp.c_proj")
        assert mlp.members == {f"{prefix}.mlp.c_fc", f"{prefix}.mlp.c_proj"}
    assert len([b for b in found if b.name.startswith("transformer.h.")]) == 4  # two per layer
    hidden = [layer for layer in view.layers if not layer.is_output]
    screened = [layer.name == found[0].name for layer in hidden]
    assert graddrop.passes([layer.kind for layer in hidden], screened, [layer.name for layer in hidden]) == \
        len(graddrop.downstream(found, [view.layer(found[0].name)]))
