"""Shared test helpers: small projects written to a temporary directory, and an in-process CLI runner."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fixtures.toy_models import signal_labels

from mechaudit.cli import main

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Project:
    dir: Path
    spec: Path

    def out(self, name: str = "out") -> Path:
        return self.dir / name


def toy_arrays(n: int = 400, seed: int = 0) -> dict[str, np.ndarray]:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, 4, generator=generator)
    return {"inputs": inputs.numpy(), "labels": signal_labels(inputs).numpy()}


def write_project(directory: Path, *, factory: str = "fixtures.toy_models:signal_mlp",
                  factory_args: dict[str, Any] | None = None, arrays: dict[str, np.ndarray] | None = None,
                  data_table: str = "", extra: str = "", model_table: str | None = None) -> Project:
    """A spec plus ``data.npz`` in ``directory``; ``arrays`` replaces the default toy data."""
    directory.mkdir(parents=True, exist_ok=True)
    np.savez(directory / "data.npz", **(arrays if arrays is not None else toy_arrays()))
    args = ", ".join(f"{k} = {json.dumps(v)}" for k, v in (factory_args or {}).items())
    model = model_table if model_table is not None else f'factory = "{factory}"\nfactory_args = {{ {args} }}'
    spec = directory / "audit.toml"
    spec.write_text(f'[model]\nname = "toy"\n{model}\n\n[data]\nfile = "data.npz"\n{data_table}\n{extra}\n',
                    encoding="utf-8")
    return Project(directory, spec)


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return write_project(tmp_path / "proj")


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


@pytest.fixture
def cli(capsys):
    def run(*args: str | Path) -> CliResult:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)
    return run


def rulebook_with(tmp_path: Path, checks: dict[str, str]):
    """The default rulebook plus a rule per ``{rule_id: check_name}``, loaded from a file in ``tmp_path``."""
    from mechaudit.rulebook import load_rulebook

    docs = 'summary = "s"\nwhat = "w"\nwhy = "y"\nhow = "h"\nfix = "f"\nreferences = ["r"]\n'
    extra = "".join(f'[rules.{rule_id}]\nname = "test-{check}"\ncheck = "{check}"\nseverity = "warning"\n'
                    f'[rules.{rule_id}.docs]\n{docs}\n' for rule_id, check in checks.items())
    path = tmp_path / "book.toml"
    path.write_text(load_rulebook("default").path.read_text() + "\n" + extra)
    return load_rulebook(str(path))


def read_findings(out: Path) -> dict:
    return json.loads((out / "findings.json").read_text(encoding="utf-8"))
