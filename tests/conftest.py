"""Shared test helpers: small projects written to a temporary directory, and an in-process CLI runner."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fixtures.toy_models import signal_labels

from mechaudit.cli import main

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``-n N``), each worker takes its share of the cores for torch's threads, unless
    OMP_NUM_THREADS says otherwise: N workers of all-core thread pools would oversubscribe the cores, where
    OpenMP's waiting threads spin and every parallel operation waits for a descheduled one."""
    workers = getattr(config, "workerinput", {}).get("workercount")
    if workers and "OMP_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = max(1, cores // int(workers))
        os.environ["OMP_NUM_THREADS"] = str(threads)  # also for the subprocesses tests start (CLI, torchrun)
        torch.set_num_threads(threads)


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


#: The tests that share :func:`example_audit` run on one pytest-xdist worker (``--dist loadgroup``), so that each
#: example audit runs once per session there too.
EXAMPLE_AUDITS = "example_audits"


@pytest.fixture(scope="session")
def example_audit(tmp_path_factory):
    """``example_audit(name, seed=0) -> (exit code, findings.json)``: ``mechaudit audit --example NAME [--seed SEED]
    --format json -q`` through the command line, in process, run once per session for each name and seed (seed 0 is
    the default: no ``--seed``). The findings are read afresh at each call: a test may change them."""
    runs: dict[tuple[str, int], tuple[int, Path]] = {}

    def run(name: str, seed: int = 0) -> tuple[int, dict]:
        if (name, seed) not in runs:
            out = tmp_path_factory.mktemp(f"{name}-seed{seed}") / "out"
            seeded = ["--seed", str(seed)] if seed else []
            code = main(["audit", "--example", name, *seeded, "--format", "json", "--out", str(out), "-q"])
            runs[name, seed] = (code, out)
        code, out = runs[name, seed]
        return code, read_findings(out)
    return run


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "example_audit" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group(EXAMPLE_AUDITS))
