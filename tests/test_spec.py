from pathlib import Path

import pytest
from conftest import write_project

from mechaudit.errors import InputError
from mechaudit.spec import Options, load_spec, parse_options, pyproject_options


def test_spec_parses_model_data_task_groups(tmp_path: Path) -> None:
    project = write_project(tmp_path, data_table='labels = "labels"\n[data.masks]\nregion = "m"\n'
                                                  '[data.concepts]\nloop = { file = "c.npz", key = "loop" }',
                            extra='[task]\nkind = "classification"\nclass_names = ["a", "b"]\n'
                                  '[audit]\nseed = 7\nselect = ["D"]\nfail-on = "warning"')
    spec = load_spec(project.spec)
    assert spec.model.factory == "fixtures.toy_models:signal_mlp"
    assert spec.data.file == (tmp_path / "data.npz").resolve()
    assert spec.data.masks["region"].key == "m"
    assert spec.data.concepts["loop"].file == (tmp_path / "c.npz").resolve()
    assert spec.class_names == ("a", "b")
    assert (spec.options.seed, spec.options.select, spec.options.fail_on) == (7, ("D",), "warning")


@pytest.mark.parametrize("extra, message", [
    ("[audit]\ncolour = 1", "unknown key 'colour'"),
    ("[audit]\nseed = \"x\"", "must be int"),
    ("[audit]\nfail-on = \"sometimes\"", "not one of"),
    ("[task]\nkind = \"poetry\"", "not one of"),
    ("[bogus]\nx = 1", "unknown key 'bogus'"),
    ("[audit]\nbatch-size = 0", "at least 1"),
])
def test_spec_rejects_bad_values(tmp_path: Path, extra: str, message: str) -> None:
    project = write_project(tmp_path, extra=extra)
    with pytest.raises(InputError, match=message):
        load_spec(project.spec)


def test_spec_requires_one_model_source(tmp_path: Path) -> None:
    project = write_project(tmp_path, model_table='factory = "a:b"\ntorchscript = "m.pt"')
    with pytest.raises(InputError, match="exactly one"):
        load_spec(project.spec)


def test_spec_paths_may_not_leave_the_project(tmp_path: Path) -> None:
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "pyproject.toml").write_text("")
    spec = tmp_path / "proj" / "audit.toml"
    spec.write_text('[model]\nfactory = "a:b"\n[data]\nfile = "../../secret.npz"\n')
    with pytest.raises(InputError, match="leaves the project directory"):
        load_spec(spec)


def test_missing_spec_and_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file not found"):
        load_spec(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\n")
    with pytest.raises(InputError, match="not valid TOML"):
        load_spec(bad)


def test_pyproject_defaults_are_found_upwards_and_overridden_by_spec(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.mechaudit]\nseed = 3\nignore = ["L202"]\nbatch-size = 64\n')
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    options = pyproject_options(nested)
    assert (options.seed, options.ignore, options.batch_size) == (3, ("L202",), 64)
    project = write_project(tmp_path / "a", extra="[audit]\nseed = 9")
    spec = load_spec(project.spec, options)
    assert (spec.options.seed, spec.options.ignore) == (9, ("L202",))


def test_parse_options_defaults() -> None:
    assert parse_options({}, "x") == Options()
