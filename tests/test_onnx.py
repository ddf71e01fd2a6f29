"""ONNX models: converted by onnx2torch, checked against onnxruntime, audited like the PyTorch model they came from."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import read_findings, write_project
from fixtures.exactness import REL, assert_equal_up_to_rounding
from fixtures.onnx_models import SmallCNN, TinyBlock, export, with_node

import mechaudit
from mechaudit.engine import run_audit
from mechaudit.errors import InputError
from mechaudit.loading.onnx_check import ATOL, compare_outputs
from mechaudit.loading.onnx_module import readable_path
from mechaudit.spec import load_spec

needs_onnx = pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in ("onnx", "onnx2torch", "onnxruntime")),
    reason='needs the extra: pip install "mechaudit[onnx]"')
RULES = ["D101", "L202", "L203", "L204"]  # rules that need no masks, concepts or pairs
VALUE_TOLERANCE = 1e-3  # |value from ONNX - value from PyTorch| per finding (measured: at most 1e-6 here)


def test_node_names_become_typeable_module_paths() -> None:
    assert readable_path("/features/features.0/Conv", "Conv") == "features.0.Conv"
    assert readable_path("/encoder/encoder.layers.0/encoder.layers.0.self_attn/MatMul", "MatMul") == \
        "encoder.layers.0.self_attn.MatMul"
    assert readable_path("/decoder/rnn/LSTM", "LSTM") == "decoder.rnn.LSTM"
    assert readable_path("", "Conv") == "Conv"
    assert readable_path("F0::anon", "Relu") == "F0__anon"
    assert readable_path("/graph/Conv", "Conv") == "graph_.Conv"  # not the GraphModule's own attribute


def test_the_conversion_check_names_the_largest_difference() -> None:
    reference = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    record = compare_outputs(reference + 1e-6, reference, Path("m.onnx"), "logits", "1.0")
    assert record["passed"] and record["max_abs_diff"] == pytest.approx(1e-6, rel=0.1)
    assert "matches onnxruntime 1.0 on 2 audit samples" in record["summary"]
    off = reference.copy()
    off[1, 0] += 0.5
    with pytest.raises(InputError, match=r"differs from onnxruntime by 0\.5 at logits\[1, 0\] \(3\.5 vs 3;"):
        compare_outputs(off, reference, Path("m.onnx"), "logits", "1.0")
    with pytest.raises(InputError, match="has shape"):
        compare_outputs(reference[:1], reference, Path("m.onnx"), "logits", "1.0")


def _project(tmp_path: Path, model: torch.nn.Module, inputs: torch.Tensor, model_table: str = 'onnx = "model.onnx"'):
    torch.manual_seed(0)
    with torch.no_grad():
        labels = model.eval()(inputs).argmax(1)
    project = write_project(tmp_path, model_table=model_table,
                            arrays={"inputs": inputs.numpy(), "labels": labels.numpy()},
                            data_table='inputs = "inputs"\nlabels = "labels"',
                            extra=f"[audit]\nselect = {json.dumps(RULES)}\nmax_samples = 120\nseed = 0\n")
    export(model, inputs[:2], tmp_path / "model.onnx")
    return project, labels


def _comparable(findings, rename=lambda text: text) -> dict:
    return {(f.rule_id, rename(f.location.component if f.location else "model"), f.metric): (f.status, f.value)
            for f in findings}


def _without_op_suffix(address: str) -> str:
    """``features.0.Conv:ch3`` -> ``features.0:ch3``: an ONNX layer's path is its PyTorch module's plus the op."""
    return re.sub(r"\.(Conv|Gemm|MatMul)(?=:|$)", "", address)


def _assert_same_findings(onnx_result, torch_result) -> None:
    from_onnx = _comparable(onnx_result.findings, _without_op_suffix)
    from_torch = _comparable(torch_result.findings)
    assert from_onnx.keys() == from_torch.keys()
    for key, (status, value) in from_torch.items():
        assert from_onnx[key][0] == status, key
        if value is not None:
            assert from_onnx[key][1] == pytest.approx(value, abs=VALUE_TOLERANCE), key


@needs_onnx
@pytest.mark.parametrize("kind", ["cnn", "transformer"])
def test_an_onnx_export_audits_to_the_findings_of_its_pytorch_model(tmp_path: Path, kind: str) -> None:
    torch.manual_seed(0)
    model, inputs = (SmallCNN(), torch.randn(120, 1, 8, 8)) if kind == "cnn" else (TinyBlock(), torch.randn(120, 5, 8))
    project, labels = _project(tmp_path, model, inputs)
    onnx_result = run_audit(load_spec(project.spec))
    torch_result = mechaudit.audit(model, inputs, labels=labels, select=RULES, max_samples=120, seed=0)
    _assert_same_findings(onnx_result, torch_result)
    layers = {c["layer"]: c["kind"] for c in onnx_result.metadata["components"]}
    expected = ({"features.0.Conv": "conv", "features.2.Conv": "conv", "classifier.Gemm": "linear"} if kind == "cnn"
                else {"q.MatMul": "linear", "k.MatMul": "linear", "v.MatMul": "linear", "o.MatMul": "linear",
                      "mlp.0.MatMul": "linear", "mlp.2.MatMul": "linear", "head.Gemm": "linear"})
    assert layers == expected
    conversion = onnx_result.metadata["model"]["conversion"]
    assert conversion["passed"] and conversion["samples"] == 120 and conversion["max_abs_diff"] < ATOL
    assert json.dumps(conversion)  # JSON-ready


@needs_onnx
def test_a_quick_run_audits_an_onnx_file_and_reports_its_conversion_check(tmp_path: Path, cli) -> None:
    torch.manual_seed(0)
    project, _ = _project(tmp_path, SmallCNN(), torch.randn(60, 1, 8, 8))
    out = tmp_path / "out"
    result = cli("audit", "--model", tmp_path / "model.onnx", "--data", project.dir / "data.npz", "--select", "D101",
                 "--layers", "features.2.Conv", "--out", out, "--format", "json,html", "-q")
    assert result.code == 0, result.err
    findings = read_findings(out)
    assert {f["location"]["component"] for f in findings["findings"]} == {"features.2.Conv"}
    model = findings["metadata"]["model"]
    assert model["source"] == str(tmp_path / "model.onnx") and list(model["sha256"]) == [model["source"]]
    assert model["conversion"]["passed"]
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "Conversion check" in html and "matches onnxruntime" in html
    from mechaudit.loading import sha256_file

    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert list(manifest["inputs"]["model"].values()) == [sha256_file(tmp_path / "model.onnx")]


@needs_onnx
def test_a_mismatch_between_the_converted_module_and_onnxruntime_is_an_error(tmp_path: Path) -> None:
    from mechaudit.loading.onnx import load_onnx

    torch.manual_seed(0)
    inputs = torch.randn(10, 1, 8, 8)
    loaded = load_onnx(export(SmallCNN(), inputs[:2], tmp_path / "model.onnx"), "cnn")
    assert loaded.conversion_check(inputs)["passed"]
    with torch.no_grad():  # as if the converter had mistranslated one weight
        loaded.module.get_submodule("classifier.Gemm").bias[1] += 0.5
    with pytest.raises(InputError, match=r"conversion check failed: .* by 0\.5 at logits\[\d+, 1\]"):
        loaded.conversion_check(inputs)


@needs_onnx
@pytest.mark.parametrize("op_type, expected", [
    ("Hardmax", r"node '/planted/Hardmax': operator 'Hardmax' \(opset \d+\) is not supported by onnx2torch"),
    ("Relu", r"node '/planted/Relu': operator 'example.custom::Relu' \(opset 1\) is not supported"),
])
def test_an_unsupported_operator_is_one_line_naming_it_and_its_node(tmp_path: Path, cli, op_type: str,
                                                                    expected: str) -> None:
    torch.manual_seed(0)
    project, _ = _project(tmp_path, SmallCNN(), torch.randn(20, 1, 8, 8))
    domain = "example.custom" if op_type == "Relu" else ""
    planted = with_node(tmp_path / "model.onnx", tmp_path / "planted.onnx", op_type, domain=domain)
    result = cli("audit", "--model", planted, "--data", project.dir / "data.npz", "--select", "D101")
    assert result.code == 2 and len(result.error_lines) == 1
    assert re.search(expected, result.error_lines[0]), result.error_lines[0]


@needs_onnx
def test_control_flow_is_refused_naming_the_node(tmp_path: Path, cli) -> None:
    import onnx
    from onnx import TensorProto, helper

    branch = [helper.make_graph([helper.make_node("Identity", ["x"], [name], name=f"/{name}/Identity")], name, [],
                                [helper.make_tensor_value_info(name, TensorProto.FLOAT, None)])
              for name in ("then_out", "else_out")]
    nodes = [helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0, name="/sum"),
             helper.make_node("Constant", [], ["zero"], value=helper.make_tensor("z", TensorProto.FLOAT, [], [0.0])),
             helper.make_node("Greater", ["total", "zero"], ["positive"], name="/gate"),
             helper.make_node("If", ["positive"], ["y"], then_branch=branch[0], else_branch=branch[1],
                              name="/route/If")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "if.onnx"))
    np.savez(tmp_path / "data.npz", inputs=np.zeros((4, 4), np.float32))
    result = cli("audit", "--model", tmp_path / "if.onnx", "--data", tmp_path / "data.npz", "--task", "regression")
    assert result.code == 2 and len(result.error_lines) == 1
    assert "node '/route/If' is an 'If' (control flow)" in result.error_lines[0]


class _Stateful(torch.nn.Module):
    """(x, state, gain) -> logits: a state with a batch axis (2, batch, 4) and a scalar, beside the audited x."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, state: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        return self.fc(x + state.sum(0)) * gain


def _stateful_project(tmp_path: Path, forward_kwargs: str):
    import warnings

    torch.manual_seed(0)
    inputs = torch.randn(30, 4)
    tmp_path.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Stateful().eval(), (inputs[:2], torch.zeros(2, 2, 4), torch.tensor(2.0)),
                          str(tmp_path / "model.onnx"), dynamo=False, input_names=["x", "state", "gain"],
                          output_names=["logits"], dynamic_axes={"x": {0: "batch"}, "state": {1: "batch"},
                                                                 "logits": {0: "batch"}})
    return write_project(tmp_path, model_table=f'onnx = "model.onnx"\n{forward_kwargs}',
                         arrays={"inputs": inputs.numpy()}, data_table='inputs = "inputs"')


@needs_onnx
def test_graph_inputs_beyond_the_audited_tensor_come_from_forward_kwargs(tmp_path: Path, cli) -> None:
    missing = _stateful_project(tmp_path / "missing", "")
    result = cli("audit", missing.spec, "--select", "D101")
    assert result.code == 2 and len(result.error_lines) == 1
    assert "inputs beyond the audited 'x': 'state' float32 [2, 'batch', 4], 'gain' float32 []" in result.err
    assert "forward_kwargs" in result.err
    given = _stateful_project(tmp_path / "given", 'forward_kwargs = { state = { shape = [2, "batch", 4], fill = 0.5 }'
                                                  ', gain = 2.0 }')
    result = run_audit(load_spec(given.spec), None)
    assert result.metadata["model"]["conversion"]["passed"]
    torch.manual_seed(0)
    inputs = torch.randn(30, 4)
    model = _Stateful().eval()  # as the export drew them: the same inputs and weights
    from mechaudit.loading.model import load_model

    loaded = load_model(load_spec(given.spec).model)
    expected = model(inputs, torch.full((2, 30, 4), 0.5), torch.tensor(2.0))
    assert_equal_up_to_rounding(loaded.module(inputs), expected)
    wrong = _stateful_project(tmp_path / "wrong", "forward_kwargs = { gain = 2.0, rate = 16000 }")
    result = cli("audit", wrong.spec)
    assert result.code == 2 and "forward_kwargs.rate: is not an input of the graph" in result.err
    shaped = _stateful_project(tmp_path / "shaped", "forward_kwargs = { gain = 2.0, state = [[1.0, 2.0]] }")
    result = cli("audit", shaped.spec)
    assert result.code == 2 and "forward_kwargs.state: has shape [1, 2]; the graph declares [2, 'batch', 4]" in result.err


@needs_onnx
def test_audit_inputs_of_another_shape_than_the_graph_input_are_one_line(tmp_path: Path, cli) -> None:
    torch.manual_seed(0)
    export(SmallCNN(), torch.zeros(2, 1, 8, 8), tmp_path / "model.onnx")
    np.savez(tmp_path / "d.npz", inputs=np.zeros((4, 1, 6, 6), np.float32))
    result = cli("audit", "--model", tmp_path / "model.onnx", "--data", tmp_path / "d.npz")
    assert result.code == 2 and len(result.error_lines) == 1
    assert "graph input 'x' is ['batch', 1, 8, 8]; the audit inputs are [4, 1, 6, 6]" in result.err


@needs_onnx
@pytest.mark.slow
def test_the_digits_example_exported_to_onnx_audits_to_the_statuses_of_the_pytorch_original(tmp_path: Path) -> None:
    import shutil

    from report_cases import example_result

    from mechaudit.examples import example_spec
    from mechaudit.loading import load_model

    original = load_spec(example_spec("digits"))
    for name in ("audit_data.npz", "localization.npz"):
        shutil.copy(original.source.parent / name, tmp_path / name)
    export(load_model(original.model, search_path=original.source.parent).module, torch.zeros(2, 1, 8, 8),
           tmp_path / "digits.onnx")
    text = original.source.read_text(encoding="utf-8")
    text = re.sub(r'factory = .*\nweights = .*\n', 'onnx = "digits.onnx"\n', text)
    (tmp_path / "digits.toml").write_text(text, encoding="utf-8")
    from_onnx = run_audit(load_spec(tmp_path / "digits.toml"))
    from_torch = example_result("digits")  # run_audit(original), audited once per session
    _assert_same_findings(from_onnx, from_torch)
    assert {f.status for f in from_torch.findings} >= {"pass", "fail", "skipped"}  # a comparison with teeth
    assert from_onnx.gate_failed and from_onnx.metadata["model"]["conversion"]["passed"]
    assert [c["layer"] for c in from_onnx.metadata["components"]] == [
        "features.0.Conv", "features.2.Conv", "classifier.0.Gemm", "classifier.2.Gemm"]


def _packaged_onnx(name: str) -> Path:
    """An ONNX file shipped in the silero-vad wheel (MIT), located without importing the package."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None:
        pytest.skip('needs silero-vad (pip install "mechaudit[test-models]")')
    return Path(spec.submodule_search_locations[0]) / "data" / name


VAD_SPEC = """[model]
name = "silero-vad 6.2.3, 16 kHz sequence model (ONNX)"
onnx = "silero_vad_16k_sequence.onnx"
# The LSTM's initial state: graph inputs beside the audio chunks.
forward_kwargs = { h = { shape = [1, 1, 128] }, c = { shape = [1, 1, 128] } }

[data]
file = "audio.npz"
inputs = "chunks"
labels = "speech"

[task]
kind = "regression"
"""


@needs_onnx
@pytest.mark.slow
def test_a_voice_activity_detector_shipped_on_pypi_is_audited_from_its_onnx_file(tmp_path: Path, cli) -> None:
    import shutil

    from fixtures.onnx_models import synthetic_speech

    from mechaudit.loading.onnx import load_onnx

    shutil.copy(_packaged_onnx("silero_vad_16k_sequence.onnx"), tmp_path)  # a spec's files stay in its project
    chunks, speech = synthetic_speech()
    np.savez(tmp_path / "audio.npz", chunks=chunks, speech=speech)
    (tmp_path / "vad.toml").write_text(VAD_SPEC, encoding="utf-8")
    out = tmp_path / "out"
    result = cli("audit", tmp_path / "vad.toml", "--out", out, "--format", "json,html", "-q")
    assert result.code == 0, result.err
    findings = read_findings(out)
    layers = ["stft.Conv", "encoder.0.Conv", "encoder.1.Conv", "encoder.2.Conv", "encoder.3.Conv"]
    assert [c["layer"] for c in findings["metadata"]["components"]] == layers
    # After the LSTM the chunks are time steps of one stream: the output layer has no batch axis, stated, not mixed
    assert "has no batch axis" in findings["metadata"]["skipped_layers"]["output.Conv"]
    d101 = [f for f in findings["findings"] if f["rule_id"] == "D101"]
    assert {f["location"]["component"] for f in d101 if f["location"]} == set(layers[1:])  # ReLU follows these
    assert [f["message"] for f in d101 if not f["location"]] == [  # the STFT convolution is no rectified layer
        "dead and dense units not judged in 1 layer(s) not followed by a rectifying nonlinearity (ReLU, GELU, SiLU, "
        "...): stft.Conv"]
    conversion = findings["metadata"]["model"]["conversion"]
    assert conversion["passed"] and conversion["output"] == "speech_probs" and conversion["samples"] == len(chunks)
    assert conversion["max_abs_diff"] < ATOL  # measured 1.2e-6: the LSTM runs as torch's nn.LSTM
    assert "Conversion check" in (out / "report.html").read_text(encoding="utf-8")
    loaded = load_onnx(tmp_path / "silero_vad_16k_sequence.onnx", "vad",
                       {"h": {"shape": [1, 1, 128]}, "c": {"shape": [1, 1, 128]}})
    with torch.no_grad():
        probability = loaded.module(torch.from_numpy(chunks)).numpy()
    assert probability[speech == 1].mean() > 0.6 > 0.3 > probability[speech == 0].mean()  # measured 0.81 vs 0.13


@needs_onnx
def test_the_detectors_file_with_control_flow_is_refused_in_one_line(tmp_path: Path, cli) -> None:
    np.savez(tmp_path / "audio.npz", inputs=np.zeros((4, 576), np.float32))  # data fine: the model is refused
    result = cli("audit", "--model", _packaged_onnx("silero_vad.onnx"), "--data", tmp_path / "audio.npz",
                 "--task", "regression")
    assert result.code == 2 and len(result.error_lines) == 1
    assert "node 'If_0' is an 'If' (control flow)" in result.error_lines[0]


@needs_onnx
def test_waivers_and_reports_address_onnx_layers_by_their_paths(tmp_path: Path, cli) -> None:
    import jsonschema
    from fixtures.compliance import write_waivers

    torch.manual_seed(0)
    project, _ = _project(tmp_path, SmallCNN(), torch.randn(120, 1, 8, 8))
    waivers = write_waivers(tmp_path / "w.toml", {"rule": "L202", "component": "features.0.Conv",
                                                  "justification": "accepted", "approver": "QA",
                                                  "expires": "2999-12-31"})
    out = tmp_path / "out"
    result = cli("audit", project.spec, "--select", "L202", "--waivers", waivers, "--fail-on", "warning", "--out",
                 out, "-q")
    assert result.code == 1  # features.2.Conv's critical units are not waived
    findings = read_findings(out)
    failing = [f for f in findings["findings"] if f["status"] == "fail"]
    waived = {f["location"]["component"] for f in failing if f.get("waiver", {}).get("state") == "active"}
    assert waived and all(c.startswith("features.0.Conv:ch") for c in waived)
    assert any(f["location"]["component"].startswith("features.2.Conv:ch") and "waiver" not in f for f in failing)
    schema = json.loads((Path(mechaudit.__file__).parent / "schemas" / "findings.schema.json").read_text())
    jsonschema.validate(findings, schema)


class _Recurrent(torch.nn.Module):
    """(N, 6, 4) -> (N, 2): an LSTM over six steps (bidirectional or not) read at its last step."""

    def __init__(self, bidirectional: bool) -> None:
        super().__init__()
        self.lstm = torch.nn.LSTM(4, 5, batch_first=True, bidirectional=bidirectional)
        self.head = torch.nn.Linear(10 if bidirectional else 5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(torch.nn.functional.pad(x, (1, 1), mode="reflect")[..., 1:-1])[0][:, -1])


@needs_onnx
@pytest.mark.parametrize("bidirectional", [False, True])
def test_an_lstm_converts_to_torchs_own_and_matches_the_original(tmp_path: Path, bidirectional: bool) -> None:
    from mechaudit.loading.onnx import load_onnx

    torch.manual_seed(0)
    model, inputs = _Recurrent(bidirectional).eval(), torch.randn(16, 6, 4)
    loaded = load_onnx(export(model, inputs[:2], tmp_path / "lstm.onnx"), "lstm")
    assert any(isinstance(m, torch.nn.LSTM) for m in loaded.module.modules())
    with torch.no_grad():
        expected = model(inputs)
        assert_equal_up_to_rounding(loaded.module(inputs), expected)
    # onnxruntime's LSTM: 4.5e-8 from the original's outputs (scale 0.5), one and two threads
    assert loaded.conversion_check(inputs)["max_abs_diff"] < REL * float(expected.abs().max())


def test_without_the_extra_loading_an_onnx_file_says_how_to_install_it(tmp_path: Path, monkeypatch, cli) -> None:
    import mechaudit.loading.onnx as onnx_loader

    real = importlib.util.find_spec
    monkeypatch.setattr(onnx_loader.importlib.util, "find_spec",  # none of the extra, whatever this environment has
                        lambda name, *a: None if name in ("onnx", "onnx2torch", "onnxruntime") else real(name, *a))
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07")
    np.savez(tmp_path / "d.npz", inputs=np.zeros((2, 4), np.float32))
    result = cli("audit", "--model", tmp_path / "m.onnx", "--data", tmp_path / "d.npz")
    assert result.code == 2
    assert result.error_lines == ['mechaudit: error: onnx: is not installed: pip install "mechaudit[onnx]"']


@pytest.mark.parametrize("model_table, message", [
    ('onnx = "m.onnx"\nfactory = "a:b"', "name exactly one of 'factory', 'torchscript', 'pickle' or 'onnx'"),
    ('onnx = "../m.onnx"', "leaves the project directory"),
])
def test_spec_errors_for_onnx_models(tmp_path: Path, model_table: str, message: str) -> None:
    project = write_project(tmp_path / "p", model_table=model_table)
    (tmp_path / "p" / "pyproject.toml").write_text("")
    with pytest.raises(InputError, match=re.escape(message)):
        load_spec(project.spec)


@needs_onnx
@pytest.mark.parametrize("mode, numpy_mode", [("constant", "constant"), ("reflect", "reflect"),
                                              ("replicate", "edge"), ("circular", "wrap")])
@pytest.mark.parametrize("shape, pads, axes", [((3, 7), [0, 2, 0, 3], None), ((2, 3, 5), [1, 2], [-1]),
                                               ((2, 3, 4, 5), [1, 2, 2, 1], [2, 3])])
def test_pad_follows_onnx_on_any_rank_and_axes(mode: str, numpy_mode: str, shape, pads, axes) -> None:
    from mechaudit.loading.onnx import require_onnx

    require_onnx()
    from mechaudit.loading.onnx_ops import PadAnyRank

    x = torch.arange(float(np.prod(shape))).reshape(shape)
    axes_list = list(range(len(shape))) if axes is None else [a % len(shape) for a in axes]
    widths = [(0, 0)] * len(shape)
    for i, axis in enumerate(axes_list):
        widths[axis] = (pads[i], pads[i + len(axes_list)])
    kwargs = {"constant_values": 7.0} if mode == "constant" else {}
    expected = np.pad(x.numpy(), widths, mode=numpy_mode, **kwargs)
    padded = PadAnyRank(mode)(x, torch.tensor(pads), torch.tensor(7.0) if mode == "constant" else None,
                              torch.tensor(axes) if axes is not None else None)
    assert np.array_equal(padded.numpy(), expected)


@needs_onnx
def test_weights_in_external_data_files_are_refused(tmp_path: Path, cli) -> None:
    import onnx

    torch.manual_seed(0)
    export(SmallCNN(), torch.zeros(2, 1, 8, 8), tmp_path / "model.onnx")
    onnx.save(onnx.load(str(tmp_path / "model.onnx")), str(tmp_path / "external.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    np.savez(tmp_path / "d.npz", inputs=np.zeros((4, 1, 8, 8), np.float32))
    result = cli("audit", "--model", tmp_path / "external.onnx", "--data", tmp_path / "d.npz")
    assert result.code == 2 and len(result.error_lines) == 1
    assert "keeps weights in external data files" in result.err
