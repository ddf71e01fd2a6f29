"""Models written like third-party code (tests/fixtures/third_party_models.py), audited from a spec or the API
without glue code."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import read_findings, write_project
from fixtures.third_party_models import forecaster, residual, shared_block, view_cnn

import mechaudit
from mechaudit.errors import InputError
from mechaudit.loading import AuditData
from mechaudit.model_view import ModelView
from mechaudit.techniques import ablation_scan
from mechaudit.techniques.ablation import ablation_loop
from mechaudit.techniques.ablation_scan import AblationScanner
from mechaudit.techniques.output_reduction import reduce_outputs, reduced_output, reduction_targets

CPU = torch.device("cpu")


def _cnn_data(n: int = 48):
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(n, 1, 8, 8, generator=generator)
    return inputs, view_cnn()(inputs).argmax(-1).detach()


def test_a_cnn_flattening_with_view_runs_through_l202_and_l207_without_fx_tracebacks(capfd) -> None:
    inputs, labels = _cnn_data()
    half = len(inputs) // 2
    data = AuditData(inputs=inputs, labels=labels, pairs=(inputs[:half], inputs[half:]))
    result = mechaudit.audit(view_cnn(), data, select=["L202", "L207"])
    assert {f.rule_id for f in result.findings} == {"L202", "L207"}
    assert all(f.status != "error" for f in result.findings), [f.message for f in result.findings]
    assert "FX-traced" not in capfd.readouterr().err


def test_the_view_cnn_scan_is_cut_and_exact() -> None:
    inputs, _ = _cnn_data(24)
    model = view_cnn()
    view = ModelView.discover(model, inputs[:2])
    scanner = AblationScanner(view, view.hidden_layers, CPU, inputs[:2])
    values = {layer.name: torch.zeros(layer.size, 1 if layer.kind == "linear" else 64) for layer in view.hidden_layers}
    scanned = scanner.scan(inputs, {"zero": (values, None)}, batch_size=8, max_batch=40)["zero"]
    for layer in view.hidden_layers:
        assert scanner.method(layer).startswith("layers before it run once"), scanner.method(layer)
        expected = ablation_loop(model, view.site(layer), layer, inputs, list(range(layer.size)),
                                 values[layer.name], 8, CPU)
        assert (scanned[layer.name] - expected).abs().max() < 1e-5, layer.name


def test_a_traced_cut_that_fails_mid_scan_falls_back_to_exact_hooks(monkeypatch, capfd) -> None:
    inputs, _ = _cnn_data(24)
    model = view_cnn()
    view = ModelView.discover(model, inputs[:2])
    layer = view.layer("conv2")
    scanner = AblationScanner(view, [layer], CPU, inputs[:2])
    original = ablation_scan._chunk

    def broken(cut, *args):
        if cut.layer.name == "conv2":
            raise RuntimeError("view size is not compatible with input tensor's size and stride")
        return original(cut, *args)

    monkeypatch.setattr(ablation_scan, "_chunk", broken)
    values = torch.zeros(layer.size, 64)
    scanned = scanner.scan(inputs, {"zero": ({"conv2": values}, None)}, batch_size=8)["zero"]["conv2"]
    expected = ablation_loop(model, view.site(layer), layer, inputs, list(range(layer.size)), values, 8, CPU)
    assert (scanned - expected).abs().max() < 1e-5
    assert scanner.method(layer).startswith("batched forward hooks (its traced cut failed (RuntimeError")


def test_a_cut_that_fails_its_trial_is_dropped_before_the_scan(monkeypatch) -> None:
    inputs, _ = _cnn_data(8)
    view = ModelView.discover(view_cnn(), inputs[:2])
    monkeypatch.setattr(ablation_scan, "_chunk", lambda *_args: torch.zeros(1))
    scanner = AblationScanner(view, view.hidden_layers, CPU, inputs[:2])
    assert all(scanner.method(layer).startswith("batched forward hooks (its traced cut") for layer in
               view.hidden_layers)


def _forecast_arrays(n: int = 160) -> dict:
    generator = torch.Generator().manual_seed(0)
    history = torch.randn(n, 12, generator=generator)
    targets = forecaster()(history).detach() + 0.05 * torch.randn(n, 4, generator=generator)
    return {"inputs": history.numpy(), "labels": targets.numpy(), "recent": (torch.arange(12) >= 8).float().numpy(),
            "clean": history[: n // 2].numpy(), "corrupted": history[n // 2:].numpy()}


FORECAST_DATA = 'labels = "labels"\nmasks = { recent = "recent" }\npairs = { clean = "clean", corrupted = "corrupted" }'


def test_a_multi_output_regressor_runs_through_the_default_rulebook_without_a_rule_error(tmp_path, cli) -> None:
    project = write_project(tmp_path / "forecast", factory="fixtures.third_party_models:forecaster",
                            arrays=_forecast_arrays(), data_table=FORECAST_DATA,
                            extra='[task]\nkind = "regression"\noutput = "mean"\n\n[behaviour]\nkind = "output"\n')
    result = cli("audit", project.spec, "--out", project.out(), "--format", "json", "--fail-on", "never")
    assert result.code == 0, result.err
    findings = read_findings(project.out())
    statuses = {run["id"]: run["status"] for run in findings["rules"]}
    assert "error" not in statuses.values(), findings["rules"]
    for rule in ("D101", "R301", "R302", "L207"):  # the behaviour: the mean of the 4 forecast outputs
        assert statuses[rule] in ("pass", "fail"), (rule, statuses)
    assert statuses["L202"] == "skipped"  # accuracy needs class predictions
    assert "to_scale" in findings["metadata"]["skipped_layers"]  # a Linear applied to a constant
    assert "no batch axis" in findings["metadata"]["skipped_layers"]["to_scale"]
    r301 = next(f for f in findings["findings"] if f["rule_id"] == "R301")
    assert "regression output: the mean of each sample's outputs" in json.dumps(r301)


def test_an_output_index_reads_one_forecast_output_and_must_exist(tmp_path, cli) -> None:
    arrays = _forecast_arrays(60)
    project = write_project(tmp_path / "index", factory="fixtures.third_party_models:forecaster", arrays=arrays,
                            data_table=FORECAST_DATA, extra='[task]\nkind = "regression"\noutput = 7\n')
    result = cli("audit", project.spec, "--out", project.out(), "--select", "D101")
    assert result.code == 2 and "output 7 does not exist: the model gives 4 output(s) per sample" in result.err
    arrays["labels"] = arrays["labels"][:, :3]
    project = write_project(tmp_path / "shape", factory="fixtures.third_party_models:forecaster", arrays=arrays,
                            data_table=FORECAST_DATA, extra='[task]\nkind = "regression"\n')
    result = cli("audit", project.spec, "--out", project.out(), "--select", "D101")
    assert result.code == 2 and "hold 3 targets per sample (3,); the model gives 4 outputs per sample" in result.err


def test_reduced_output_is_the_mean_or_the_chosen_output() -> None:
    outputs = torch.tensor([[1.0, 2.0, 6.0], [0.0, 3.0, 3.0]])
    assert reduced_output(outputs, reduction_targets("mean", 2)).tolist() == [3.0, 2.0]
    assert reduced_output(outputs, reduction_targets(2, 2)).tolist() == [6.0, 3.0]
    assert reduce_outputs(outputs, 1).tolist() == [2.0, 3.0]


def test_a_block_run_several_times_per_forward_is_skipped_with_its_reason_and_refused_when_named() -> None:
    model = shared_block()
    view = ModelView.discover(model, torch.randn(2, 4))
    assert [layer.name for layer in view.layers] == ["inp", "out"]
    assert view.skipped["block"].startswith("it runs 3 times per forward pass")
    with pytest.raises(InputError, match="'block' cannot be audited: it runs 3 times per forward pass"):
        ModelView.discover(model, torch.randn(2, 4), ("block",))


def test_a_rule_error_inside_a_hook_names_the_layer(monkeypatch) -> None:
    import mechaudit.activations as activations

    def broken(output, layer):
        raise IndexError("Dimension out of range")

    monkeypatch.setattr(activations, "units_view", broken)
    inputs, labels = _cnn_data(16)
    (finding, *_) = mechaudit.audit(view_cnn(), inputs, labels=labels, select=["D101"]).findings
    assert finding.status == "error"
    assert finding.message.startswith("check 'dead_units' failed at layer conv1: IndexError")


def _toy(n: int = 40, **extra) -> dict:
    generator = torch.Generator().manual_seed(0)
    return {"inputs": torch.randn(n, 4, generator=generator).numpy(), "labels": (torch.arange(n) % 2).numpy(),
            **extra}


@pytest.mark.parametrize(("arrays", "data_table", "fragment"), [
    (_toy(labels=(torch.arange(39) % 2).numpy()), "", "expected one value per sample (40,)"),
    (_toy(m=torch.ones(5).numpy()), 'masks = { m = "m" }', "mask 'm': has shape (5,); expected (4,)"),
    (_toy(a=torch.ones(10, 4).numpy(), b=torch.ones(10, 3).numpy()), 'pairs = { clean = "a", corrupted = "b" }',
     "differ in shape"),
    (_toy(c=torch.ones(7).numpy()), 'concepts = { c = "c" }', "concept 'c': has shape (7,)"),
])
def test_data_errors_come_before_the_model_is_loaded(tmp_path, cli, arrays, data_table, fragment) -> None:
    project = write_project(tmp_path / "p", factory="fixtures.third_party_models:never_loaded", arrays=arrays,
                            data_table=data_table)
    result = cli("audit", project.spec, "--out", project.out())
    assert result.code == 2 and fragment in result.err, result.err
    assert "was loaded" not in result.err


def test_a_1_by_l_mask_broadcasts_over_1d_inputs(tmp_path, cli) -> None:
    mask = torch.tensor([[1.0, 0.0, 0.0, 0.0]])  # (1, L) for inputs (N, L)
    project = write_project(tmp_path / "mask", arrays=_toy(m=mask.numpy()), data_table='masks = { m = "m" }')
    result = cli("audit", project.spec, "--out", project.out(), "--select", "L201", "--format", "json")
    assert result.code in (0, 1), result.err
    (finding, *_) = read_findings(project.out())["findings"]
    assert finding["location"]["component"] == "input:m" and finding["evidence"]["mask_area_share"] == 0.25


@pytest.mark.parametrize("untraceable", [False, True])
def test_d101_judges_layers_followed_by_a_rectifier_only(untraceable: bool) -> None:
    inputs = torch.randn(64, 3, 4, generator=torch.Generator().manual_seed(0))  # (samples, tokens, features)

    def d101(dead: str, **options) -> list:
        return mechaudit.audit(residual(dead, untraceable), inputs, select=["D101"], **options).findings

    planted = d101("fc1")  # all of fc1 (read by a ReLU) below 0: dead
    dead_fc1 = next(f for f in planted if f.metric == "dead_fraction" and f.location.component == "fc1")
    assert dead_fc1.status == "fail" and dead_fc1.value == 1.0 and dead_fc1.evidence["activation"] == "ReLU"
    control = d101("block.0")  # all of block.0 below 0, but it is added to a residual, no ReLU: not judged
    judged = [f for f in control if f.location and f.location.component == "block.0"]
    if untraceable:  # no activation module runs after it, and functional ones cannot be seen: judged, and said so
        assert judged and judged[0].evidence["activation"].startswith("unknown (the model cannot be traced")
    else:
        assert not judged
        (summary,) = [f for f in control if "not_judged" in f.evidence]
        assert summary.status == "pass" and summary.evidence["not_judged"]["block.0"] == "add"
    streams = d101("", layers=["fc1", "block"])  # a residual stream: never dead or dense
    assert [f for f in streams if "not_judged" in f.evidence][0].evidence["not_judged"] == {
        "block": "a residual stream (no activation function of its own)"}


def _scripted_project(tmp_path, forward_kwargs: str, layers: str = ""):
    from fixtures.third_party_models import WithSampleRate

    torch.manual_seed(0)
    archive = torch.jit.script(WithSampleRate().eval())
    (tmp_path / "p").mkdir(parents=True)
    torch.jit.save(archive, str(tmp_path / "p" / "vad.ts"))
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(80, 4, generator=generator)
    arrays = {"inputs": inputs.numpy(), "labels": archive(inputs, sr=16000).argmax(-1).numpy(),
              "m": torch.tensor([[1.0, 1.0, 0.0, 0.0]]).numpy()}
    model = f'torchscript = "vad.ts"\n{forward_kwargs}\n'
    return write_project(tmp_path / "p", model_table=model, arrays=arrays, data_table='masks = { m = "m" }',
                         extra=f"[audit]\nlayers = {layers}\n" if layers else "")


def test_a_torchscript_model_with_a_keyword_argument_is_audited_on_inputs_and_outputs(tmp_path, cli) -> None:
    project = _scripted_project(tmp_path, "forward_kwargs = { sr = 16000 }")
    result = cli("audit", project.spec, "--out", project.out(), "--format", "json", "--fail-on", "never")
    assert result.code == 0, result.err
    runs = {run["id"]: run for run in read_findings(project.out())["rules"]}
    assert "error" not in {run["status"] for run in runs.values()}
    assert runs["L201"]["status"] in ("pass", "fail") and runs["L204"]["status"] in ("pass", "fail")
    assert runs["D101"]["status"] == "skipped"
    assert "ScriptModules refuse forward hooks" in runs["D101"]["reason"]  # said, not silently "no layers"


def test_torchscript_refusals_are_one_clear_line(tmp_path, cli) -> None:
    missing = _scripted_project(tmp_path / "a", "")
    result = cli("audit", missing.spec, "--out", missing.out())
    assert result.code == 2 and "only 16000 Hz is supported" in result.err, result.err
    wrong = _scripted_project(tmp_path / "b", "forward_kwargs = { rate = 16000 }")
    result = cli("audit", wrong.spec, "--out", wrong.out())
    assert result.code == 2 and "forward() has no argument 'rate' (it takes: sr)" in result.err
    named = _scripted_project(tmp_path / "c", "forward_kwargs = { sr = 16000 }", layers='["fc1"]')
    result = cli("audit", named.spec, "--out", named.out())
    assert result.code == 2 and "'fc1' is inside a TorchScript module: ScriptModules refuse forward hooks" in result.err
    assert len(result.error_lines) == 1


def test_forward_kwargs_of_a_python_model_keep_its_layers_traceable_and_copyable(tmp_path) -> None:
    import copy

    from fixtures.third_party_models import WithSampleRate

    from mechaudit.loading.forward_kwargs import bind_forward_kwargs

    model = bind_forward_kwargs(WithSampleRate().eval(), {"sr": 16000})
    inputs = torch.randn(6, 4)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.fc2.bias.add_(1.0)  # the copy calls its own weights, not the original's
        assert not torch.allclose(twin(inputs), model(inputs))
    view = ModelView.discover(model, inputs[:2])
    scanner = AblationScanner(view, view.hidden_layers, CPU, inputs[:2])
    assert scanner.method(view.layer("fc1")).startswith("layers before it run once")  # traced with sr = 16000


def test_a_copy_of_a_wrapped_torchscript_model_runs_its_own_parameters() -> None:
    import copy

    from fixtures.third_party_models import WithSampleRate

    from mechaudit.loading.forward_kwargs import bind_forward_kwargs

    model = bind_forward_kwargs(torch.jit.script(WithSampleRate().eval()), {"sr": 16000})
    assert {name for name, _ in model.named_modules()} >= {"fc1", "fc2"}
    inputs = torch.randn(6, 4)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        dict(twin.named_parameters())["fc2.bias"].add_(1.0)
        assert torch.allclose(twin(inputs), model(inputs) + 1.0, atol=1e-5)
