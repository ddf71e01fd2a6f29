"""A non-editable install into a fresh venv finds the rulebooks, templates and embedded examples."""

import os
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
from conftest import REPO


def _venv_seeing_these_packages(env_dir: Path) -> Path:
    """A fresh venv (its own site-packages first) that also sees the packages of the interpreter running the tests
    (torch and the rest), listed in a ``.pth`` file: ``system_site_packages`` would give the *base* interpreter's
    packages, which lack them when the tests run in a venv. Plain directory lines, so the outer environment's own
    ``.pth`` files (an editable mechaudit) are not read. Returns the venv's python."""
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    inner = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                           check=True, capture_output=True, text=True).stdout.strip()
    outer = [*site.getsitepackages(), *([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])]
    (Path(inner) / "outer-environment.pth").write_text("".join(f"{path}\n" for path in outer), encoding="utf-8")
    return python


@pytest.mark.slow
def test_wheel_ships_rules_templates_and_examples(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(REPO)],
                   check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("mechaudit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "mechaudit/_data/rules/default.toml" in names
    assert "mechaudit/_data/templates/report.html.j2" in names
    assert "mechaudit/examples/digits/digits.safetensors" in names

    env_dir = tmp_path / "venv"
    python = _venv_seeing_these_packages(env_dir)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}  # no checkout shadows it
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, capture_output=True,
                   env=env)
    probe = ("import mechaudit, mechaudit.resources as r; "
             "print(mechaudit.__file__); print(r.data_dir('rules')); print(r.data_dir('templates'))")
    lines = subprocess.run([python, "-c", probe], cwd=tmp_path, check=True, capture_output=True, text=True,
                           env=env).stdout.splitlines()
    assert all(str(env_dir) in line for line in lines), lines
    rules = subprocess.run([env_dir / "bin" / "mechaudit", "rules"], cwd=tmp_path, capture_output=True, text=True,
                           env=env)
    assert rules.returncode == 0 and "L201" in rules.stdout, rules.stderr
    out = tmp_path / "report"
    audit = subprocess.run([env_dir / "bin" / "mechaudit", "audit", "--example", "digits-control", "--out", str(out),
                            "--format", "json,html", "-q"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert audit.returncode == 0, audit.stderr
    assert (out / "findings.json").is_file() and (out / "report.html").is_file()
