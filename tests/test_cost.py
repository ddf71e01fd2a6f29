"""The cost model and budgets (mechaudit/cost.py, calibration.py, planning.py): the plan, refusal and reduction
before a rule runs, and estimates that match the passes a rule really makes (counted by instrumenting the model,
never by timing)."""

import math
from dataclasses import replace

import pytest
import torch
from conftest import toy_arrays, write_project
from fixtures.localization_toys import patching_pairs
from fixtures.toy_models import signal_mlp

import mechaudit
from mechaudit import calibration, cost, engine, planning
from mechaudit.cli import main
from mechaudit.cost import Calibration, Cost, RuleCost, Sizes
from mechaudit.loading import AuditData

#: A calibration that makes estimates deterministic: one sample-forward or -backward takes a second.
SLOW = Calibration(forward_seconds=1.0, backward_seconds=1.0, flop_seconds=1e-12, call_seconds=0.0)


@pytest.fixture
def data() -> dict:
    return toy_arrays(300)


@pytest.fixture
def slow_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """The audit calibrates to :data:`SLOW` (the sizes are still measured on the model)."""
    real = calibration.measure
    monkeypatch.setattr(engine, "measure", lambda context, isolate: (real(context, isolate)[0], SLOW))


def test_plan_prints_every_rule_and_runs_none(tmp_path, monkeypatch, capsys) -> None:
    project = write_project(tmp_path)
    monkeypatch.setattr(engine, "_run_rule", lambda *a, **k: pytest.fail("--plan ran a rule"))
    code = main(["audit", str(project.spec), "--plan", "--extend-select", "D104", "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("plan: ") and "sample-forward takes" in lines[0]
    assert lines[1].split()[:6] == ["rule", "action", "forward", "backward", "memory", "est."]
    assert {line.split()[0] for line in lines[2:-1]} >= {"D101", "D104", "L202", "R301"}
    assert "R301  skip" in out  # no behaviour declared: the plan says the rule will be skipped, and why
    assert lines[-1].startswith("estimated total: ")
    assert not (tmp_path / "out").exists()  # nothing written


def test_the_digits_plan_runs_every_rule_on_a_machine_four_times_slower(monkeypatch, capsys) -> None:
    """The plan must not depend on the machine's load: the embedded example with its default options reduces and
    refuses nothing even when every timing of the calibration is four times slower."""
    real = calibration.measure

    def slower(context, isolate):
        sizes, measured = real(context, isolate)
        return sizes, replace(measured, forward_seconds=4 * measured.forward_seconds,
                              backward_seconds=4 * measured.backward_seconds,
                              flop_seconds=4 * measured.flop_seconds, call_seconds=4 * measured.call_seconds)
    monkeypatch.setattr(engine, "measure", slower)
    assert main(["audit", "--example", "digits", "--plan"]) == 0
    actions = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines()[2:-1]}
    assert "L202" in actions and set(actions.values()) <= {"run", "skip"}, actions


def test_time_is_judged_with_a_safety_factor() -> None:
    """A rule estimated within twice the time-out runs as set (the calibration is a wall-clock timing that varies
    with load); one beyond it is reduced to fit twice the time-out."""
    from dataclasses import dataclass

    @dataclass
    class Params:
        samples: int = 1000

    linear = RuleCost(lambda sizes, params: Cost(forward=sizes.n(params.samples)), reduce="samples")
    within = planning.plan_rules([_Rule("A1", linear, Params())], _sizes(), replace(SLOW, forward_seconds=0.05),
                                 30, 2**40)
    beyond = planning.plan_rules([_Rule("A1", linear, Params())], _sizes(), replace(SLOW, forward_seconds=0.1), 30,
                                 2**40)
    assert within.rules[0].action == "run" and within.rules[0].seconds == pytest.approx(50)
    assert beyond.rules[0].action == "reduce" and beyond.rules[0].reduced == {"samples": (1000, 600)}
    assert "exceeds 2 x --rule-timeout 30 s" in beyond.rules[0].reason


def test_plan_with_bad_input_exits_2(tmp_path, capsys) -> None:
    assert main(["audit", str(tmp_path / "missing.toml"), "--plan"]) == 2
    assert "error" in capsys.readouterr().err


def test_verbose_prints_the_plan_before_running_and_findings_json_records_it(tmp_path, capsys) -> None:
    project = write_project(tmp_path)
    assert main(["audit", str(project.spec), "-v", "--select", "D101", "--format", "json"]) in (0, 1)
    captured = capsys.readouterr()
    assert captured.err.startswith("plan: 1 rules")
    import json
    result = json.loads(captured.out)
    plan = result["metadata"]["plan"]
    assert [entry["rule"] for entry in plan["rules"]] == ["D101"]
    assert plan["rules"][0]["forward_passes"] == 400  # the unit statistics: one pass over the 400 samples
    assert plan["calibration"]["forward_ms_per_sample"] > 0
    assert plan["calibration"]["threads"] == torch.get_num_threads()  # seconds hold for this many threads
    assert result["rules"][0]["seconds"] >= 0  # beside the estimate, the measured time of the same rule


def test_a_rule_over_the_time_budget_is_refused_before_it_runs(data, slow_machine, monkeypatch) -> None:
    monkeypatch.setattr(engine, "_run_rule", lambda *a, **k: pytest.fail("a refused rule ran"))
    result = mechaudit.audit(signal_mlp(), data["inputs"], labels=data["labels"], select=["L202"],
                             rule_timeout=60)
    [finding] = result.findings
    assert finding.status == "error"
    assert finding.message.startswith("refused before running: an estimated ")
    assert "exceeds 2 x --rule-timeout 60 s" in finding.message and "lift it with --rule-timeout " in finding.message
    assert finding.evidence["budget"]["action"] == "refuse"
    assert result.rules[0].status == "error" and result.rules[0].seconds == 0.0


def test_the_same_rule_runs_when_it_fits(data, slow_machine) -> None:
    """The control: with no time-out (0) the slow calibration refuses nothing."""
    result = mechaudit.audit(signal_mlp(), data["inputs"], labels=data["labels"], select=["L202"], rule_timeout=0)
    assert {f.status for f in result.findings} <= {"pass", "fail"}
    assert result.metadata["plan"]["rules"][0]["action"] == "run"


def test_a_rule_over_the_free_memory_is_refused(data, monkeypatch) -> None:
    monkeypatch.setattr(engine, "available_bytes", lambda device: 1024)
    result = mechaudit.audit(signal_mlp(), data["inputs"], labels=data["labels"], select=["L202"])
    [finding] = result.findings
    assert finding.status == "error" and "of free memory" in finding.message
    assert "lower --batch-size or --max-samples" in finding.message


def test_a_reducible_rule_runs_reduced_and_says_so(data, slow_machine) -> None:
    """D104 over 300 samples at a second each would take 300 s, past twice a 100 s budget: its ``samples`` is
    lowered until the estimate fits, and every finding says so (message and evidence)."""
    result = mechaudit.audit(signal_mlp(), data["inputs"], labels=data["labels"], select=["D104"],
                             rule_timeout=100)
    entry = result.metadata["plan"]["rules"][0]
    assert entry["action"] == "reduce"
    lowered = entry["reduced"]["samples"]
    assert lowered["from"] == 2048 and 32 <= lowered["to"] < 200
    assert entry["estimated_seconds"] <= 200
    assert result.findings and all(f.status != "error" for f in result.findings)
    for finding in result.findings:
        assert finding.message.endswith(f"[reduced to fit the budget: samples 2048 -> {lowered['to']}]")
        assert finding.evidence["budget_reduction"]["reduced"] == {"samples": lowered}
        assert finding.evidence["samples"] == lowered["to"]  # the rule ran with the lowered parameter
    assert "lowered from 2048" in result.rules[0].reason


def test_refusal_names_the_floor_when_even_the_smallest_reduction_does_not_fit(data, slow_machine) -> None:
    result = mechaudit.audit(signal_mlp(), data["inputs"], labels=data["labels"], select=["D104"], rule_timeout=10)
    [finding] = result.findings
    assert finding.status == "error" and "(even with samples = 32)" in finding.message


# -- estimates against counted passes -----------------------------------------------------------------------------

class Counter:
    """Counts sample-forwards and sample-backwards through a model's output layer (every full or partial forward
    pass runs it; a forward of a batch of 64 counts 64)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.forward = self.backward = 0
        self.module = module

    def __enter__(self) -> "Counter":
        self.handles = [self.module.register_forward_hook(self._forward),
                        self.module.register_full_backward_hook(self._backward)]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()

    def _forward(self, _module, _args, output) -> None:
        self.forward += output.shape[0]

    def _backward(self, _module, _grad_input, grad_output) -> None:
        self.backward += grad_output[0].shape[0]


def _counted(rule_id: str, data: dict, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, "Counter"]:
    """The plan's entry for ``rule_id`` and the passes counted while it ran."""
    model = signal_mlp()
    counted = {}
    real_run = engine._run_rule

    def counting(rule, context, *args, **kwargs):
        with Counter(model.fc2) as counter:
            run = real_run(rule, context, *args, **kwargs)
        counted[rule.id] = counter
        return run
    monkeypatch.setattr(engine, "_run_rule", counting)
    inputs = torch.as_tensor(data["inputs"])
    audited = AuditData(inputs=inputs, labels=torch.as_tensor(data["labels"]), pairs=patching_pairs(256),
                        masks={"m": torch.tensor([1, 0, 0, 0])})
    result = mechaudit.audit(model, audited, select=[rule_id], extend_select=["D104"] if rule_id == "D104" else [],
                             behaviour={"kind": "class_logit", "target": "0"} if rule_id in ("R303", "R304") else None,
                             rule_timeout=0)
    entry = result.metadata["plan"]["rules"][0]
    assert entry["action"] == "run"
    assert counted[rule_id].forward > 0
    return entry, counted[rule_id]


@pytest.mark.parametrize("rule_id", ["D101", "D104", "L201", "L204", "L207"])
def test_estimated_passes_are_within_a_factor_of_two_of_the_counted_ones(data, monkeypatch, rule_id) -> None:
    entry, counter = _counted(rule_id, data, monkeypatch)
    assert 0.5 <= entry["forward_passes"] / counter.forward <= 2.0, (entry, counter.forward)
    if counter.backward or entry["backward_passes"]:
        assert 0.5 <= entry["backward_passes"] / max(counter.backward, 1) <= 2.0, (entry, counter.backward)


def test_r303_estimate_counts_its_what_if_and_pathway_passes(data, monkeypatch) -> None:
    """R303 runs 12 + 7 x (hidden layers) passes per region (what-if edits and the cross-fitted pathway effect on
    halves of the samples) beside its own edge scores against the means: the estimate is within a factor of two of
    the counted forward passes (it charged 6 passes and no edge scores). Backward passes are not compared: the
    split check's VJPs end before the output layer the counter hooks."""
    entry, counter = _counted("R303", data, monkeypatch)
    assert 0.5 <= entry["forward_passes"] / counter.forward <= 2.0, (entry, counter.forward)


# -- the planner on its own -----------------------------------------------------------------------------------

class _Check:
    def __init__(self, model: RuleCost) -> None:
        self.cost = model


class _Rule:
    def __init__(self, rule_id: str, model: RuleCost, params) -> None:
        self.id, self.check, self.params = rule_id, _Check(model), params


def _sizes() -> Sizes:
    return Sizes(samples=1000, max_samples=1000, batch_size=100, layers=(), input_values=4, output_values=2)


def test_a_shared_artifact_is_charged_to_the_first_rule_that_needs_it() -> None:
    from dataclasses import dataclass

    @dataclass
    class Params:
        samples: int = 100

    shared = Cost(forward=500)
    defining = RuleCost(lambda sizes, params: Cost(forward=10, shared=(("thing", shared),)))
    using = RuleCost(lambda sizes, params: Cost(forward=1) + cost.uses("thing"))
    plan = planning.plan_rules([_Rule("A1", using, Params()), _Rule("B1", defining, Params())], _sizes(), SLOW, 0,
                           2**40)
    assert [e.forward for e in plan.rules] == [501, 10]  # the user runs first: it pays for the artifact


def test_reduction_picks_the_largest_value_that_fits() -> None:
    from dataclasses import dataclass

    @dataclass
    class Params:
        samples: int = 1000

    linear = RuleCost(lambda sizes, params: Cost(forward=sizes.n(params.samples)), reduce="samples")
    plan = planning.plan_rules([_Rule("A1", linear, Params())], _sizes(), replace(SLOW, forward_seconds=0.1), 30,
                           2**40)
    [entry] = plan.rules
    assert entry.action == "reduce" and entry.reduced == {"samples": (1000, 600)}  # 2 x the time-out


def test_the_ablation_scan_estimate_is_an_upper_bound(data, monkeypatch) -> None:
    """L202 is estimated as one full forward pass per unit and mode; the scan runs only the part after the layer,
    and through a Linear layer only the ablated unit's columns (measured here: 909 rows through the output layer
    against 7,800 estimated), so its estimate bounds the work from above."""
    entry, counter = _counted("L202", data, monkeypatch)
    assert counter.forward <= entry["forward_passes"] <= 10 * counter.forward


def test_edge_scores_charge_screened_pairs_and_bound_weight_chunks() -> None:
    """A heads pair wider than MAX_PASSES on both sides costs one more forward+backward pass over all samples and
    MAX_PASSES VJPs per batch (it was free); a wide weight pair's memory is bounded by the chunks."""
    from mechaudit.cost import LayerSize, edge_scores
    from mechaudit.techniques.gradient_edges import MAX_PASSES
    from mechaudit.techniques.weight_edges import CHUNK_ELEMENTS

    def part(kind: str, units: int, values: int):
        layers = tuple(LayerSize(f"l{i}", kind, units, values, True) for i in range(2))
        sizes = Sizes(samples=1000, max_samples=1000, batch_size=100, layers=layers, input_values=4, output_values=2)
        return edge_scores(sizes, 1000).shared[0][1]

    narrow, wide = part("heads", MAX_PASSES, MAX_PASSES), part("heads", 2 * MAX_PASSES, 2 * MAX_PASSES)
    assert wide.forward >= narrow.forward + 2000
    assert wide.backward >= narrow.backward + 1000
    conv = part("conv", 512, 512 * 1024)
    activations = Sizes(samples=1000, max_samples=1000, batch_size=100, input_values=4, output_values=2,
                        layers=(LayerSize("l0", "conv", 512, 512 * 1024, True),) * 2).batch_bytes(1000, 3)
    assert conv.peak_bytes == max(activations, 4 * 2 * CHUNK_ELEMENTS)  # dense: 4 * 3 * 100 * 512 * 512 * 1024


def test_probe_cost_counts_every_seeded_split_and_shuffle() -> None:
    """L205 fits ``folds`` x (``seeds`` + ``shuffles``) fits: the estimate grows with the seeds."""
    from mechaudit.checks.probes import ProbesParams, _cost
    from mechaudit.cost import LayerSize

    sizes = Sizes(samples=1000, max_samples=1000, batch_size=100, input_values=4, output_values=2,
                  layers=(LayerSize("fc", "linear", 16, 16, True),))
    one, three = (_cost(sizes, replace(ProbesParams(), seeds=s, shuffles=2)).flops for s in (1, 3))
    assert math.isclose(three / one, 5 / 3)


def test_the_single_points_estimate_is_an_upper_bound(data, monkeypatch) -> None:
    """R304 is estimated over every audit sample; a class-logit behaviour is measured on that class's samples only
    (about a quarter here), which the sizes cannot know, so the estimate bounds the passes from above."""
    entry, counter = _counted("R304", data, monkeypatch)
    assert counter.forward <= entry["forward_passes"] <= 10 * counter.forward


class _Wait(torch.nn.Module):
    """Identity that takes ``seconds``: where a model spends its time between (and after) audited layers."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import time

        time.sleep(self.seconds)
        return x


def test_calibration_times_where_each_layer_is_ready_and_edges_charge_the_model_between(monkeypatch) -> None:
    """A model that spends most of its time after its audited layers (GPT-2's unembedding) gets small shares
    between them: measured where each layer's activation is ready, not one audited layer's share of the model."""
    from mechaudit.cost import LayerSize, between, edge_scores

    model = torch.nn.Sequential(torch.nn.Linear(4, 8), _Wait(0.02), torch.nn.Linear(8, 8), _Wait(0.08),
                                torch.nn.Linear(8, 2))
    seen = []
    real = calibration.measure
    monkeypatch.setattr(engine, "measure", lambda context, isolate: seen.append(real(context, isolate)) or seen[-1])
    mechaudit.audit(model, torch.randn(32, 4), labels=torch.randint(0, 2, (32,)), select=["D101"], rule_timeout=0,
                    layers=["0", "2"])
    first, second = seen[0][0].layers[:2]
    assert first.at is not None and second.at is not None
    assert 0.1 < between(seen[0][0], first, second) < 0.35  # 0.02 s of about 0.1 s (one layer's share: 0.5)

    def heads(at: tuple[float, float] | tuple[None, None]) -> float:
        layers = tuple(LayerSize(f"l{i}", "heads", 12, 12 * 32, True, at[i]) for i in range(2))
        sizes = Sizes(samples=100, max_samples=100, batch_size=100, layers=layers, input_values=4, output_values=2)
        return edge_scores(sizes, 100).shared[0][1].backward
    assert heads((0.10, 0.15)) == pytest.approx(100 * (1 + 12 * 0.05))  # 12 VJPs, each 5% of a backward pass
    assert heads((None, None)) == pytest.approx(100 * (1 + 12 * 0.5))  # untimed: one of two layers' share


def test_between_is_the_distance_in_either_order_and_the_split_check_charges_it() -> None:
    """The share between two layers is the same either way round and nothing between a layer and itself; the
    check whether a linear pair splits by unit (two VJPs between the two layers) is charged that share too."""
    from mechaudit.cost import LayerSize, between, edge_scores

    first, second = (LayerSize(f"l{i}", "linear", 8, 8, True, at) for i, at in enumerate((0.1, 0.4)))
    sizes = Sizes(samples=100, max_samples=100, batch_size=10, layers=(first, second), input_values=4,
                  output_values=2)
    assert between(sizes, first, second) == between(sizes, second, first) == pytest.approx(0.3)
    assert between(sizes, first, first) == 0.0
    assert between(sizes, first, replace(second, at=None)) == 0.5  # untimed: one of two layers' share
    check = edge_scores(sizes, 100).shared[0][1].backward - 100  # less the shared backward pass of all samples
    assert check == pytest.approx(2 * 10 * 0.3 + 3 * 10 * 0.5)  # and second's possible unaudited reader: 3 VJPs


def test_unaudited_reader_checks_and_means_are_charged() -> None:
    """A hidden Linear layer acting per position (a transformer MLP's up projection) may have an unaudited reader
    (module_readers): its search (a batch forward), split checks (two forwards, two VJPs) and input means (one
    more forward over every audit input) are charged; a per-sample Linear followed by another hidden layer is not."""
    from mechaudit.cost import LayerSize, circuit_references, edge_scores, reader_layers

    def sizes(values: int) -> Sizes:
        layers = (LayerSize("up", "linear", 8, values, True), LayerSize("h2", "conv", 8, 8, True),
                  LayerSize("head", "linear", 3, 3, False))
        return Sizes(samples=200, max_samples=100, batch_size=10, layers=layers, input_values=4, output_values=3)
    per_token, per_sample = sizes(40), sizes(8)
    assert [layer.name for layer in reader_layers(per_token)] == ["up"]
    assert reader_layers(per_sample) == []
    extra = edge_scores(per_token, 100).shared[0][1].forward - edge_scores(per_sample, 100).shared[0][1].forward
    assert extra == pytest.approx(10 * (1 + 2))
    means = circuit_references(per_token, 100).shared[0][1].forward - circuit_references(per_sample, 100).shared[0][1].forward
    assert means == pytest.approx(200)


def test_calibration_times_the_model_without_its_hooks(monkeypatch) -> None:
    """Hooks that cost time (heads hooks re-run attention) slow only the pass that records sizes and readiness:
    the forward seconds come from unhooked passes, like the one-sample passes they are fitted with."""
    import time

    from mechaudit import model_view

    real_units_view, real_measure = model_view.units_view, calibration.measure

    def slow_units_view(*args, **kwargs):
        time.sleep(0.03)
        return real_units_view(*args, **kwargs)

    def measure(context, isolate):
        with pytest.MonkeyPatch.context() as slow:
            slow.setattr(model_view, "units_view", slow_units_view)
            seen.append(real_measure(context, isolate))
        return seen[-1]
    seen = []
    monkeypatch.setattr(engine, "measure", measure)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    mechaudit.audit(model, torch.randn(32, 4), labels=torch.randint(0, 2, (32,)), select=["D101"], rule_timeout=0,
                    layers=["0", "2"])
    sizes, measured = seen[0]
    assert all(layer.at is not None for layer in sizes.layers)
    assert measured.forward_seconds * 32 < 0.01  # hooked passes take 0.06 s and more


def _agree(rank: int, world: int, init: str, result: str) -> None:
    import torch.distributed as dist

    from mechaudit.cost import LayerSize

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        shares = [(0.2, 0.5, None), (0.4, None, 0.9)][rank]
        sizes = Sizes(samples=10, max_samples=10, batch_size=10, input_values=4, output_values=2,
                      layers=tuple(LayerSize(f"l{i}", "linear", 8, 8, True, at) for i, at in enumerate(shares)))
        mine = Calibration(1e-3 * (rank + 1), 2e-3, 1e-10, 0.0, rank == 0)
        torch.save(calibration.agreed(sizes, mine, 1000 - rank), f"{result}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ranks_agree_on_the_calibration_and_the_readiness_shares(tmp_path) -> None:
    """Under torchrun every rank plans from the same numbers (else one rank may reduce a rule another runs in
    full, and their collectives hang): the readiness shares too, averaged, None where any rank lacks one."""
    import torch.multiprocessing as mp

    mp.spawn(_agree, args=(2, f"file://{tmp_path / 'rendezvous'}", str(tmp_path / "result")), nprocs=2)
    results = [torch.load(tmp_path / f"result.{rank}", weights_only=False) for rank in range(2)]
    assert results[0] == results[1]
    sizes, agreed, memory = results[0]
    assert [layer.at for layer in sizes.layers] == [pytest.approx(0.3), None, None]
    assert (agreed.forward_seconds, agreed.backward_measured, memory) == (2e-3, False, 999)


def test_patching_cost_charges_the_second_order_screen_for_a_similarity_behaviour() -> None:
    """L207's similarity metric is stationary on the corrupted run by construction: its second-order screen (a
    forward pass and 1 + 2 * PROBES backward passes per batch, and the reader check on SITE_CHECK_SAMPLES pairs)
    is charged; other behaviours and exact runs not."""
    from mechaudit.checks.patching import PatchingParams, _cost
    from mechaudit.cost import LayerSize, unit_split_check
    from mechaudit.techniques.second_order import PROBES, SITE_CHECK_SAMPLES

    layers = (LayerSize("fc", "linear", 1024, 1024, True),)
    plain, similarity = (Sizes(samples=100, max_samples=100, batch_size=50, input_values=4, output_values=8,
                               layers=layers, behaviour=kind) for kind in ("", "similarity"))
    base, screened = _cost(plain, PatchingParams()), _cost(similarity, PatchingParams())
    check = unit_split_check(similarity, SITE_CHECK_SAMPLES)  # fc may have an unaudited reader: checked
    assert check.forward > 0 and check.backward > 0
    assert screened.backward - base.backward == pytest.approx((1 + 2 * PROBES) * 100 + check.backward)
    assert screened.forward - base.forward == pytest.approx(100 + check.forward)
    exhaustive = replace(PatchingParams(), exhaustive=True)
    assert _cost(similarity, exhaustive).backward == _cost(plain, exhaustive).backward


def test_circuit_scores_against_pairs_and_against_means_are_two_artifacts() -> None:
    """With pairs declared, R301 scores against them and R303 against the mean activations: two computations,
    each charged once (R303's was free, read as R301's); without pairs both read one."""
    from mechaudit.checks.circuit_discovery import CircuitDiscoveryParams
    from mechaudit.checks.circuit_discovery import _cost as r301
    from mechaudit.checks.protected_pathway import ProtectedPathwayParams
    from mechaudit.checks.protected_pathway import _cost as r303
    from mechaudit.cost import LayerSize

    layers = (LayerSize("fc1", "linear", 8, 8, True), LayerSize("fc2", "linear", 2, 2, False))
    for pairs, artifacts in ((100, 2), (0, 1)):
        sizes = Sizes(samples=100, max_samples=100, batch_size=10, layers=layers, input_values=4, output_values=2,
                      regions=1, pairs=pairs)
        names = {name for name, _ in r301(sizes, CircuitDiscoveryParams()).shared + r303(
            sizes, ProtectedPathwayParams()).shared}
        assert len(names) == artifacts, names


def test_torch_s_lazy_gradient_imports_are_paid_before_the_rules_run(monkeypatch) -> None:
    """torch imports its symbolic-shape module (and sympy: 0.3 s) on the first VJP with a cotangent; the engine
    takes one tiny such product before the first rule when a rule that runs has backward passes, so that no rule's
    time includes it."""
    from mechaudit import lazy_imports

    calls: list[str] = []
    monkeypatch.setattr(lazy_imports, "_vjp", lambda: calls.append("vjp"))
    lazy_imports.warm_up_gradients([0.0, 0.0])
    assert not calls
    lazy_imports.warm_up_gradients([0.0, 5.0])
    assert calls == ["vjp"]
    order: list[str] = []
    monkeypatch.setattr(engine, "warm_up_gradients", lambda passes: order.append(f"warm-up {sorted(passes)}"))
    real_run = engine._run_rule
    monkeypatch.setattr(engine, "_run_rule", lambda rule, *a, **k: (order.append(rule.id), real_run(rule, *a, **k))[1])
    data = toy_arrays(64)
    mechaudit.audit(signal_mlp(), data["inputs"], labels=data["labels"], select=["D101", "L201"], rule_timeout=0)
    assert order[1:] == ["D101", "L201"] and order[0].startswith("warm-up [0") and not order[0].endswith("[0, 0]")


def test_a_failing_warm_up_is_left_to_the_rules(monkeypatch) -> None:
    from mechaudit import lazy_imports

    def broken() -> None:
        raise RuntimeError("a broken install")
    monkeypatch.setattr(lazy_imports, "_vjp", broken)
    lazy_imports.warm_up_gradients([1.0])  # no exception: the audit goes on, a gradient rule reports its own error


def test_the_warm_up_loads_what_torch_imports_lazily_for_gradients() -> None:
    """The premise, in a fresh process: after ``import torch`` sympy (which the first VJP with a cotangent imports)
    is not loaded yet (nor by importing mechaudit), and after the warm-up it is. Should a torch version import it eagerly, or never, this fails and
    the warm-up (and the 0.3 s taken out of the cost model) should be revisited."""
    import subprocess
    import sys
    code = ("import sys; from mechaudit.lazy_imports import warm_up_gradients; before = 'sympy' in sys.modules; "
            "warm_up_gradients([1.0]); print(before, 'sympy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["False", "True"]
