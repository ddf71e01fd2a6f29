"""A catalogue of hostile inputs. Each gives exit 2 with one clear line naming the input and the problem and
leaves no output, or, where only some rules are affected, an ``error`` / ``skipped`` finding while the rest of
the audit completes. Never a traceback."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import read_findings, toy_arrays, write_project
from fixtures.toy_models import signal_mlp
from safetensors.torch import save_file


@dataclass
class Rejected:
    """Exit 2, one line on stderr containing ``fragment``."""

    fragment: str


@dataclass
class Finding:
    """The audit completes with exit ``code``; rule ``rule_id`` has ``status`` and a message with ``fragment``."""

    rule_id: str
    status: str
    fragment: str
    code: int = 0


Case = Callable[[Path, pytest.MonkeyPatch], tuple[list, object]]
CASES: dict[str, Case] = {}


def case(function: Case) -> Case:
    CASES[function.__name__] = function
    return function


def spec_args(project) -> list:
    return ["audit", project.spec]


# --- files -----------------------------------------------------------------------------------------------------

@case
def missing_data_file(d: Path, monkeypatch: pytest.MonkeyPatch):
    p = write_project(d)
    (p.dir / "data.npz").unlink()
    return spec_args(p), Rejected("data file not found")


@case
def empty_data_file(d: Path, monkeypatch: pytest.MonkeyPatch):
    p = write_project(d)
    (p.dir / "data.npz").write_bytes(b"")
    return spec_args(p), Rejected("data file is empty")


@case
def truncated_npz(d: Path, monkeypatch: pytest.MonkeyPatch):
    p = write_project(d)
    raw = (p.dir / "data.npz").read_bytes()
    (p.dir / "data.npz").write_bytes(raw[: len(raw) // 2])
    return spec_args(p), Rejected("data.npz")


@case
def text_behind_npz_extension(d: Path, monkeypatch: pytest.MonkeyPatch):
    p = write_project(d)
    (p.dir / "data.npz").write_text("inputs,labels\n1,0\n")
    return spec_args(p), Rejected("not a .npz archive")


@case
def truncated_safetensors_weights(d: Path, monkeypatch: pytest.MonkeyPatch):
    save_file(signal_mlp().state_dict(), d / "w.safetensors") if d.mkdir(parents=True) is None else None
    raw = (d / "w.safetensors").read_bytes()
    (d / "w.safetensors").write_bytes(raw[:-20])
    p = write_project(d, model_table='factory = "fixtures.toy_models:mlp"\nweights = "w.safetensors"')
    return spec_args(p), Rejected("not a readable safetensors file")


@case
def pickle_behind_safetensors_extension(d: Path, monkeypatch: pytest.MonkeyPatch):
    d.mkdir(parents=True)
    torch.save(signal_mlp().state_dict(), d / "w.safetensors")
    p = write_project(d, model_table='factory = "fixtures.toy_models:mlp"\nweights = "w.safetensors"')
    return spec_args(p), Rejected("not a readable safetensors file")


@case
def garbage_state_dict(d: Path, monkeypatch: pytest.MonkeyPatch):
    d.mkdir(parents=True)
    (d / "w.pt").write_bytes(b"\x00\x01garbage" * 10)
    p = write_project(d, model_table='factory = "fixtures.toy_models:mlp"\nweights = "w.pt"')
    return spec_args(p), Rejected("w.pt")


@case
def directory_instead_of_data_file(d: Path, monkeypatch: pytest.MonkeyPatch):
    p = write_project(d)
    (p.dir / "data.npz").unlink()
    (p.dir / "data.npz").mkdir()
    return spec_args(p), Rejected("path is not a file")


@case
def directory_instead_of_spec(d: Path, monkeypatch: pytest.MonkeyPatch):
    d.mkdir(parents=True)
    return ["audit", d], Rejected("is not a file")


@case
def unreadable_data_file(d: Path, monkeypatch: pytest.MonkeyPatch):
    p = write_project(d)
    path = p.dir / "data.npz"
    os.chmod(path, 0)
    if os.access(path, os.R_OK):  # root reads anything: make the permission check see what a user would
        real = os.access
        monkeypatch.setattr(os, "access", lambda f, m, **k: False if Path(f) == path else real(f, m, **k))
    return spec_args(p), Rejected("permission denied")


@case
def symlink_out_of_project(d: Path, monkeypatch: pytest.MonkeyPatch):
    outside = d / "outside"
    outside.mkdir(parents=True)
    np.savez(outside / "secret.npz", **toy_arrays())
    p = write_project(d / "proj")
    (p.dir / "pyproject.toml").write_text("")
    (p.dir / "data.npz").unlink()
    (p.dir / "data.npz").symlink_to(outside / "secret.npz")
    return spec_args(p), Rejected("leaves the project directory")


@case
def very_large_file(d: Path, monkeypatch: pytest.MonkeyPatch):
    arrays = toy_arrays()
    arrays["padding"] = np.random.default_rng(0).random(300_000)  # ~2.4 MB, incompressible
    p = write_project(d, arrays=arrays)
    return spec_args(p) + ["--max-file-mb", "1"], Rejected("above the limit of 1 MiB")


# --- specs -----------------------------------------------------------------------------------------------------

@case
def spec_unknown_top_level_key(d: Path, monkeypatch: pytest.MonkeyPatch):
    return spec_args(write_project(d, extra="[extras]\nx = 1")), Rejected("unknown key 'extras'")


@case
def spec_unknown_model_key(d: Path, monkeypatch: pytest.MonkeyPatch):
    p = write_project(d, model_table='factory = "fixtures.toy_models:mlp"\nweigths = "w.safetensors"')
    return spec_args(p), Rejected("unknown key 'weigths'")


@case
def spec_wrong_type(d: Path, monkeypatch: pytest.MonkeyPatch):
    return spec_args(write_project(d, extra='[audit]\nseed = "seven"')), Rejected("must be int")


@case
def spec_missing_data_section(d: Path, monkeypatch: pytest.MonkeyPatch):
    d.mkdir(parents=True)
    (d / "audit.toml").write_text('[model]\nfactory = "fixtures.toy_models:mlp"\n')
    return ["audit", d / "audit.toml"], Rejected("missing section [data]")


@case
def spec_path_with_dotdot(d: Path, monkeypatch: pytest.MonkeyPatch):
    p = write_project(d / "proj")
    (p.dir / "pyproject.toml").write_text("")
    p.spec.write_text(p.spec.read_text().replace('file = "data.npz"', 'file = "../../../etc/passwd.npz"'))
    return spec_args(p), Rejected("leaves the project directory")


@case
def spec_not_toml(d: Path, monkeypatch: pytest.MonkeyPatch):
    p = write_project(d)
    p.spec.write_text("[model\nfactory = ")
    return spec_args(p), Rejected("not valid TOML")


@case
def spec_factory_without_colon(d: Path, monkeypatch: pytest.MonkeyPatch):
    return spec_args(write_project(d, model_table='factory = "fixtures.toy_models.mlp"')), Rejected(
        "not of the form module:callable")


@case
def unicode_names_work(d: Path, monkeypatch: pytest.MonkeyPatch):
    arrays = toy_arrays()
    project_dir = d / "prüfung-模型"
    project_dir.mkdir(parents=True)
    np.savez(project_dir / "daten-数据.npz", **arrays)
    spec = project_dir / "spéc.toml"
    spec.write_text('[model]\nname = "modèle ✓"\nfactory = "fixtures.toy_models:signal_mlp"\n'
                    '[data]\nfile = "daten-数据.npz"\n[task]\nclass_names = ["oui", "não"]\n', encoding="utf-8")
    return ["audit", spec, "--select", "D101"], Finding("D101", "pass", "never activate")


@case
def rulebook_with_duplicate_rule_ids(d: Path, monkeypatch: pytest.MonkeyPatch):
    d.mkdir(parents=True)
    table = '[rules.D101]\nname = "a"\ncheck = "dead_units"\nseverity = "info"\n'
    (d / "book.toml").write_text(table + table)
    p = write_project(d)
    return spec_args(p) + ["--rulebook", d / "book.toml"], Rejected("not valid TOML")


@case
def rulebook_threshold_out_of_range(d: Path, monkeypatch: pytest.MonkeyPatch):
    from mechaudit.resources import rulebook_path
    d.mkdir(parents=True)
    text = rulebook_path("default").read_text() + "\n[rules.D101.params]\nmax_dead_fraction = 1.5\n"
    (d / "book.toml").write_text(text)
    return spec_args(write_project(d)) + ["--rulebook", d / "book.toml"], Rejected("1.5 is outside [0.0, 1.0]")


@case
def unknown_rule_selector(d: Path, monkeypatch: pytest.MonkeyPatch):
    return spec_args(write_project(d)) + ["--select", "D101,Q7"], Rejected("rule selector 'Q7'")


# --- data ------------------------------------------------------------------------------------------------------

def _with(key: str, value: np.ndarray, **overrides) -> dict:
    arrays = toy_arrays(40)
    arrays[key] = value
    arrays.update(overrides)
    return arrays


@case
def nan_in_inputs(d: Path, monkeypatch: pytest.MonkeyPatch):
    x = toy_arrays(40)["inputs"]
    x[5, 2] = np.nan
    return spec_args(write_project(d, arrays=_with("inputs", x))), Rejected("contains 1 NaN or infinite value")


@case
def inf_in_inputs(d: Path, monkeypatch: pytest.MonkeyPatch):
    x = toy_arrays(40)["inputs"]
    x[0, 0] = np.inf
    return spec_args(write_project(d, arrays=_with("inputs", x))), Rejected("NaN or infinite")


@case
def string_inputs(d: Path, monkeypatch: pytest.MonkeyPatch):
    return spec_args(write_project(d, arrays=_with("inputs", np.array([["a"] * 4] * 40)))), Rejected(
        "expected numbers")


@case
def complex_dtype_inputs(d: Path, monkeypatch: pytest.MonkeyPatch):
    return spec_args(write_project(d, arrays=_with("inputs", np.ones((40, 4), np.complex64)))), Rejected(
        "expected numbers")


@case
def inputs_of_wrong_shape(d: Path, monkeypatch: pytest.MonkeyPatch):
    return spec_args(write_project(d, arrays=_with("inputs", np.ones((40, 3), np.float32)))), Rejected(
        "do the inputs fit the model")


@case
def empty_dataset(d: Path, monkeypatch: pytest.MonkeyPatch):
    return spec_args(write_project(d, arrays={"inputs": np.ones((0, 4), np.float32)})), Rejected(
        "at least one sample")


@case
def one_class_only(d: Path, monkeypatch: pytest.MonkeyPatch):
    arrays = toy_arrays(40)
    arrays["labels"][:] = 1
    return spec_args(write_project(d, arrays=arrays)), Finding("L202", "skipped", "single class")


@case
def labels_out_of_range(d: Path, monkeypatch: pytest.MonkeyPatch):
    arrays = toy_arrays(40)
    arrays["labels"][3] = 9
    return spec_args(write_project(d, arrays=arrays)), Rejected("labels: values must lie in 0..1")


@case
def labels_count_mismatch(d: Path, monkeypatch: pytest.MonkeyPatch):
    return spec_args(write_project(d, arrays=_with("labels", np.zeros(39, np.int64)))), Rejected(
        "one value per sample")


@case
def mask_of_wrong_shape(d: Path, monkeypatch: pytest.MonkeyPatch):
    p = write_project(d, arrays=_with("m", np.ones((3,), np.float32)), data_table='[data.masks]\nm = "m"')
    return spec_args(p), Rejected("mask 'm': has shape (3,)")


@case
def mask_out_of_range(d: Path, monkeypatch: pytest.MonkeyPatch):
    p = write_project(d, arrays=_with("m", np.full((4,), 2.0, np.float32)), data_table='[data.masks]\nm = "m"')
    return spec_args(p), Rejected("values must lie in [0, 1]")


@case
def mismatched_pair_counts(d: Path, monkeypatch: pytest.MonkeyPatch):
    p = write_project(d, arrays=_with("clean", np.ones((5, 4), np.float32), corrupted=np.ones((4, 4), np.float32)),
                      data_table='[data.pairs]\nclean = "clean"\ncorrupted = "corrupted"')
    return spec_args(p), Rejected("differ in shape")


@case
def data_key_missing(d: Path, monkeypatch: pytest.MonkeyPatch):
    p = write_project(d, data_table='labels = "targets"')
    return spec_args(p), Rejected("has no array 'targets'")


# --- models ----------------------------------------------------------------------------------------------------

@case
def factory_import_error(d: Path, monkeypatch: pytest.MonkeyPatch):
    return spec_args(write_project(d, factory="fixtures.no_such_module:build")), Rejected("cannot import module")


@case
def factory_raising(d: Path, monkeypatch: pytest.MonkeyPatch):
    return spec_args(write_project(d, factory="fixtures.toy_models:raising_factory")), Rejected(
        "raised ValueError: factory refused")


@case
def factory_returning_non_module(d: Path, monkeypatch: pytest.MonkeyPatch):
    return spec_args(write_project(d, factory="fixtures.toy_models:not_a_module")), Rejected("not a torch.nn.Module")


@case
def forward_raising(d: Path, monkeypatch: pytest.MonkeyPatch):
    return spec_args(write_project(d, factory="fixtures.toy_models:exploding")), Rejected("forward exploded")


@case
def wrong_output_shape(d: Path, monkeypatch: pytest.MonkeyPatch):
    return spec_args(write_project(d, factory="fixtures.toy_models:flat")), Rejected("is not (samples, classes)")


@case
def tuple_output(d: Path, monkeypatch: pytest.MonkeyPatch):
    return spec_args(write_project(d, factory="fixtures.toy_models:tuple_output")), Rejected(
        "returns a tuple; expected a tensor")


@case
def nan_outputs(d: Path, monkeypatch: pytest.MonkeyPatch):
    return spec_args(write_project(d, factory="fixtures.toy_models:nan_output")), Rejected("NaN or infinite outputs")


@case
def non_differentiable_model_for_attribution(d: Path, monkeypatch: pytest.MonkeyPatch):
    arrays = _with("m", np.array([1, 0, 0, 0], np.float32))
    p = write_project(d, factory="fixtures.toy_models:rounding", arrays=arrays, data_table='[data.masks]\nm = "m"')
    return spec_args(p), Finding("L201", "error", "not differentiable", code=1)


@case
def model_without_auditable_layers(d: Path, monkeypatch: pytest.MonkeyPatch):
    return spec_args(write_project(d, factory="fixtures.toy_models:no_layers")), Finding(
        "D101", "skipped", "no auditable hidden layers")


@case
def model_in_train_mode(d: Path, monkeypatch: pytest.MonkeyPatch):
    # audited in eval mode: dropout off, so the exact drops of the undropped model (base accuracy 100%)
    return spec_args(write_project(d, factory="fixtures.toy_models:in_train_mode")), Finding(
        "L202", "fail", "drops accuracy by 14.2% (from 100.0%)")


@case
def model_with_buffer_on_another_device(d: Path, monkeypatch: pytest.MonkeyPatch):
    return spec_args(write_project(d, factory="fixtures.toy_models:meta_buffer")), Rejected("cannot be moved to cpu")


@case
def pickled_model_without_opt_in(d: Path, monkeypatch: pytest.MonkeyPatch):
    d.mkdir(parents=True)
    torch.save(signal_mlp(), d / "model.pt")
    return spec_args(write_project(d, model_table='pickle = "model.pt"')), Rejected("--trust-pickle")


def test_catalogue_is_large_enough() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_input(name: str, tmp_path: Path, cli, monkeypatch) -> None:
    args, expected = CASES[name](tmp_path / "case", monkeypatch)
    out = tmp_path / "out"
    result = cli(*args, "--out", out, "-q")
    assert "Traceback" not in result.err and "Traceback" not in result.out
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    assert not leftovers, leftovers
    if isinstance(expected, Rejected):
        assert result.code == 2, (result.code, result.err)
        assert len(result.error_lines) == 1, result.err
        assert result.err.startswith("mechaudit: error: ") and expected.fragment in result.err, result.err
        assert not out.exists()
    else:
        assert result.code == expected.code, (result.code, result.err)
        findings = [f for f in read_findings(out)["findings"] if f["rule_id"] == expected.rule_id]
        assert findings and all(f["status"] == expected.status for f in findings), findings
        assert any(expected.fragment in f["message"] for f in findings), findings
