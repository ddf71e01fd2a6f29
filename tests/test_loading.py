import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.toy_models import mlp
from safetensors.torch import save_file

from mechaudit.errors import InputError
from mechaudit.loading import load_data, load_model
from mechaudit.spec import DataRef, DataSpec, ModelSpec

FACTORY = "fixtures.toy_models:mlp"


def test_factory_with_safetensors_and_state_dict(tmp_path: Path) -> None:
    reference = mlp()
    save_file(reference.state_dict(), tmp_path / "w.safetensors")
    torch.save(reference.state_dict(), tmp_path / "w.pt")
    for weights in ("w.safetensors", "w.pt"):
        loaded = load_model(ModelSpec("m", factory=FACTORY, weights=tmp_path / weights))
        assert torch.equal(loaded.module.fc1.weight, reference.fc1.weight)
        assert not loaded.module.training
        assert list(loaded.hashes.values())[0] and len(list(loaded.hashes.values())[0]) == 64


def test_weights_saved_from_a_compiled_model_fit_the_eager_one(tmp_path: Path) -> None:
    reference = mlp()
    compiled = torch.compile(reference)
    assert all(key.startswith("_orig_mod.") for key in compiled.state_dict())
    save_file(compiled.state_dict(), tmp_path / "w.safetensors")
    loaded = load_model(ModelSpec("m", factory=FACTORY, weights=tmp_path / "w.safetensors"))
    assert torch.equal(loaded.module.fc1.weight, reference.fc1.weight)


def test_weights_that_do_not_fit(tmp_path: Path) -> None:
    save_file(mlp(hidden=3).state_dict(), tmp_path / "w.safetensors")
    with pytest.raises(InputError, match="weights do not fit the model"):
        load_model(ModelSpec("m", factory=FACTORY, weights=tmp_path / "w.safetensors"))


@pytest.mark.parametrize("content, message", [(b"", "empty"), (b"garbage bytes", "not a readable safetensors")])
def test_broken_weight_files(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "w.safetensors").write_bytes(content)
    with pytest.raises(InputError, match=message):
        load_model(ModelSpec("m", factory=FACTORY, weights=tmp_path / "w.safetensors"))


@pytest.mark.parametrize("factory, message", [
    ("no_such_module_xyz:build", "cannot import"),
    ("fixtures.toy_models:missing", "has no attribute"),
    ("fixtures.toy_models:raising_factory", "raised ValueError"),
    ("fixtures.toy_models:not_a_module", "not a torch.nn.Module"),
])
def test_factory_problems(factory: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        load_model(ModelSpec("m", factory=factory))


def test_torchscript(tmp_path: Path) -> None:
    scripted = torch.jit.script(mlp())
    scripted.save(str(tmp_path / "m.pt"))
    loaded = load_model(ModelSpec("m", torchscript=tmp_path / "m.pt"))
    x = torch.randn(3, 4)
    assert torch.allclose(loaded.module(x), scripted(x))
    torch.save(mlp().state_dict(), tmp_path / "sd.pt")
    with pytest.raises(InputError, match="not a TorchScript archive"):
        load_model(ModelSpec("m", torchscript=tmp_path / "sd.pt"))


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['MECHAUDIT_TEST_MARKER']}",))


def test_malicious_pickle_does_not_run_without_opt_in(tmp_path: Path, monkeypatch) -> None:
    marker = tmp_path / "pwned"
    monkeypatch.setenv("MECHAUDIT_TEST_MARKER", str(marker))
    with open(tmp_path / "evil.pt", "wb") as handle:
        pickle.dump(_Payload(), handle)
    with pytest.raises(InputError, match="--trust-pickle"):
        load_model(ModelSpec("m", pickle=tmp_path / "evil.pt"))
    # also as "weights" of a factory: weights_only loading refuses it
    with pytest.raises(InputError, match="refusing to unpickle"):
        load_model(ModelSpec("m", factory=FACTORY, weights=tmp_path / "evil.pt"))
    assert not marker.exists()


def test_a_pickled_compiled_model_is_loaded_as_the_module_it_compiles(tmp_path: Path) -> None:
    torch.save(torch.compile(mlp()), tmp_path / "compiled.pt")
    loaded = load_model(ModelSpec("m", pickle=tmp_path / "compiled.pt"), trust_pickle=True)
    assert type(loaded.module).__name__ != "OptimizedModule"
    assert not any("_orig_mod" in name for name, _ in loaded.module.named_modules())


def test_pickled_module_with_opt_in(tmp_path: Path) -> None:
    torch.save(mlp(), tmp_path / "full.pt")
    loaded = load_model(ModelSpec("m", pickle=tmp_path / "full.pt"), trust_pickle=True)
    assert isinstance(loaded.module, torch.nn.Module)


def _npz(tmp_path: Path, **arrays) -> Path:
    np.savez(tmp_path / "d.npz", **arrays)
    return tmp_path / "d.npz"


def test_npz_with_groups(tmp_path: Path) -> None:
    x = np.random.rand(10, 1, 4, 4).astype(np.float32)
    mask = np.zeros((1, 4, 4), np.float32)
    mask[0, :2, :2] = 1
    path = _npz(tmp_path, inputs=x, labels=np.arange(10) % 3, m=mask, c=np.arange(10) % 2, clean=x, corr=x[::-1])
    spec = DataSpec(path, masks={"wm": DataRef(path, "m")}, concepts={"odd": DataRef(path, "c")},
                    pairs={"clean": DataRef(path, "clean"), "corrupted": DataRef(path, "corr")})
    data = load_data(spec)
    assert data.inputs.shape == (10, 1, 4, 4) and data.inputs.dtype == torch.float32
    assert data.labels.tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    assert data.masks["wm"].shape == (1, 4, 4) and data.is_spatial
    assert data.pairs[0].shape == data.pairs[1].shape
    assert list(data.hashes) == [str(path)]


def test_safetensors_pt_and_csv_data(tmp_path: Path) -> None:
    x = torch.rand(6, 4)
    save_file({"inputs": x, "labels": torch.arange(6) % 2}, tmp_path / "d.safetensors")
    torch.save({"inputs": x, "labels": torch.arange(6) % 2}, tmp_path / "d.pt")
    (tmp_path / "d.csv").write_text("a,b,sex,labels\n" + "".join(f"{i},{i*2},{i%2},{i%2}\n" for i in range(6)))
    for name in ("d.safetensors", "d.pt"):
        data = load_data(DataSpec(tmp_path / name))
        assert torch.allclose(data.inputs, x) and data.labels.tolist() == [0, 1, 0, 1, 0, 1]
    csv_path = tmp_path / "d.csv"
    data = load_data(DataSpec(csv_path, protected={"sex": DataRef(csv_path, "sex")}))
    assert data.feature_names == ["a", "b", "sex"]
    assert data.inputs.shape == (6, 3) and data.protected["sex"].tolist() == [0, 1, 0, 1, 0, 1]


@pytest.mark.parametrize("arrays, spec_kwargs, message", [
    ({"inputs": np.array([[1.0, np.nan]])}, {}, "NaN or infinite"),
    ({"inputs": np.array([[1.0, np.inf]])}, {}, "NaN or infinite"),
    ({"x": np.ones((2, 2))}, {}, "has no array 'inputs'"),
    ({"inputs": np.ones((3, 2)), "labels": np.array([0, 1])}, {}, "one value per sample"),
    ({"inputs": np.ones((3, 2)), "labels": np.array([0.5, 1, 0])}, {}, "whole numbers"),
    ({"inputs": np.ones((0, 2))}, {}, "at least one sample"),
    ({"inputs": np.array([["a", "b"]])}, {}, "expected numbers"),
    ({"inputs": np.ones((3, 4)), "m": np.ones(3)}, {"masks": "m"}, "mask 'wm': has shape"),
])
def test_bad_data(tmp_path: Path, arrays, spec_kwargs, message: str) -> None:
    path = _npz(tmp_path, **arrays)
    masks = {"wm": DataRef(path, spec_kwargs["masks"])} if "masks" in spec_kwargs else {}
    with pytest.raises(InputError, match=message):
        load_data(DataSpec(path, masks=masks))


def test_missing_and_unsupported_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_data(DataSpec(tmp_path / "none.npz"))
    (tmp_path / "d.txt").write_text("1")
    with pytest.raises(InputError, match="unsupported data format"):
        load_data(DataSpec(tmp_path / "d.txt"))
    (tmp_path / "fake.npz").write_text("not a zip")
    with pytest.raises(InputError, match="not a .npz archive"):
        load_data(DataSpec(tmp_path / "fake.npz"))
    with pytest.raises(InputError, match="not a file"):
        load_data(DataSpec(tmp_path))


def test_object_arrays_are_not_unpickled(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", inputs=np.array([{"a": 1}], dtype=object))
    with pytest.raises(InputError, match="unpickling"):
        load_data(DataSpec(tmp_path / "d.npz"))
