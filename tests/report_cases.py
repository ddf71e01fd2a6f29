"""Audit results shared by the report tests: each embedded example is audited once per test session."""

from __future__ import annotations

import json
import shutil
from functools import cache
from pathlib import Path

import pytest
from conftest import Project, write_project

from mechaudit.engine import run_audit
from mechaudit.examples import EXAMPLES, example_spec
from mechaudit.findings import AuditResult
from mechaudit.spec import load_spec


def weights_present(name: str) -> bool:
    spec = load_spec(example_spec(name))
    return spec.model.weights is None or spec.model.weights.is_file()


@cache
def example_result(name: str) -> AuditResult:
    """The result of ``mechaudit audit --example NAME`` (in process, so torch is imported once). Do not mutate."""
    if name not in EXAMPLES or not weights_present(name):
        pytest.skip(f"example {name} has no weights yet (python -m mechaudit.examples.digits.train)")
    return run_audit(load_spec(example_spec(name)), command=f"mechaudit audit --example {name} --out out "
                                                            "--format json,html,pdf")


def require_binary(name: str) -> str:
    """The path of a system binary a test needs; skips (with the reason) only when it is truly absent."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (apt-get install {_PACKAGES.get(name, name)})")
    return path


_PACKAGES = {"pdftotext": "poppler-utils", "pdftoppm": "poppler-utils", "pdfinfo": "poppler-utils",
             "chromedriver": "chromium-driver"}


#: Strings an attacker (or an unlucky user) may put in component names, class names and spec fields.
HOSTILE_SCRIPT = '<script>alert("x")</script>'
HOSTILE_QUOTES = "q'uo\"te&amp;<b>"
HOSTILE_LONG = "\u00e9\u00e8\u4e2d" + "w" * 300
HOSTILE_MODEL = f'''"""A model whose module names are hostile strings."""
import torch
from torch import nn

NAMES = {[HOSTILE_SCRIPT, HOSTILE_QUOTES, HOSTILE_LONG]!r}


class Hostile(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        for name, (n_in, n_out) in zip(NAMES, ((4, 8), (8, 8), (8, 2))):
            self.add_module(name, nn.Linear(n_in, n_out))
        with torch.no_grad():  # dead units, so that rules fail and list hostile addresses
            getattr(self, NAMES[1]).bias[:6] = -100.0

    def forward(self, x):
        layers = list(self.children())
        for layer in layers[:-1]:
            x = torch.relu(layer(x))
        return layers[-1](x)


def build():
    return Hostile()
'''


def hostile_project(directory: Path) -> Project:
    """A project whose model name, module names, class names and scope are hostile strings."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hostile_model.py").write_text(HOSTILE_MODEL, encoding="utf-8")
    quoted = [json.dumps(s, ensure_ascii=False) for s in (HOSTILE_SCRIPT, HOSTILE_QUOTES, HOSTILE_LONG)]
    project = write_project(directory, factory="hostile_model:build", data_table='labels = "labels"',
                            extra=f"[task]\nclass_names = [{quoted[0]}, {quoted[2]}]\n"
                                  f"[scope]\nintended_use = {quoted[0]}\nout_of_scope = {quoted[1]}\n"
                                  f"owner = {quoted[2]}\n")
    text = project.spec.read_text(encoding="utf-8")
    project.spec.write_text(text.replace('name = "toy"', f"name = {quoted[1]}"), encoding="utf-8")
    return project


def audit_project(project: Project) -> AuditResult:
    return run_audit(load_spec(project.spec), command=f"mechaudit audit {project.spec} --out out")
