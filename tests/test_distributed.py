"""Data-parallel audits under torchrun (gloo on the CPU): the same findings as one process; a failing rank stops
every rank with one line and no bundle; the collectives gather in sample order and reduce exactly."""

from __future__ import annotations

import datetime
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mechaudit import distributed
from mechaudit.testing import compare_findings

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               OMP_NUM_THREADS="1", MECHAUDIT_DIST_TIMEOUT="120")
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _audit(args: list[str], processes: int, cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    launcher = [] if processes == 1 else [
        "-m", "torch.distributed.run", "--nproc-per-node", str(processes), "--master-addr", "127.0.0.1",
        "--master-port", str(_free_port())]
    command = [sys.executable, *launcher, "-m", "mechaudit", "audit", *args, "-q"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=_env(), cwd=cwd, timeout=600)
    return done, time.perf_counter() - start


def test_single_process_is_a_no_op() -> None:
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.shard(7) == slice(0, 7)
    part = torch.arange(6.0).reshape(3, 2)
    assert distributed.gather(part) is part and distributed.reduce(part, "max") is part
    with distributed.step():
        pass


def _collectives(rank: int, world: int, init: str, result: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        samples = torch.arange(11.0).reshape(11, 1) * 10  # uneven shards: 5 + 6 samples
        block = distributed.shard(len(samples))
        gathered = distributed.gather(samples[block])
        summed = distributed.reduce(torch.tensor([float(block.stop - block.start)]))
        largest = distributed.reduce(torch.tensor([float(rank)]), "max")
        failure = None
        try:
            with distributed.step():
                if rank == 1:
                    raise ValueError("planted")
        except Exception as exc:  # every rank must raise: rank 1 its own error, rank 0 RankFailure
            failure = f"{type(exc).__name__}: {exc}"
        torch.save({"block": (block.start, block.stop), "gathered": gathered, "summed": summed,
                    "largest": largest, "failure": failure}, f"{result}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_collectives_gather_in_sample_order_and_reduce(tmp_path: Path) -> None:
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_collectives, args=(2, init, str(tmp_path / "result")), nprocs=2)
    results = [torch.load(tmp_path / f"result.{rank}") for rank in range(2)]
    assert [r["block"] for r in results] == [(0, 5), (5, 11)]
    for r in results:  # every rank holds the whole, in sample order
        assert torch.equal(r["gathered"], torch.arange(11.0).reshape(11, 1) * 10)
        assert r["summed"].item() == 11 and r["largest"].item() == 1
    assert results[0]["failure"] == "RankFailure: rank 1: ValueError: planted"
    assert results[1]["failure"] == "ValueError: planted"


@pytest.mark.slow
@pytest.mark.parametrize("example", ["digits", "induction"])
def test_two_gloo_processes_find_what_one_process_finds(tmp_path: Path, example: str) -> None:
    one, one_s = _audit(["--example", example, "--out", str(tmp_path / "one")], 1, tmp_path)
    two, two_s = _audit(["--example", example, "--out", str(tmp_path / "two")], 2, tmp_path)
    assert one.returncode in (0, 1), one.stderr
    assert two.returncode == one.returncode, two.stderr[-3000:]  # torchrun exits 1 for a gate failure too
    first = json.loads((tmp_path / "one" / "findings.json").read_text())
    second = json.loads((tmp_path / "two" / "findings.json").read_text())
    differ, largest = compare_findings(first, second)
    assert differ == [] and largest <= 1e-5, (differ, largest)
    assert second["metadata"]["distributed"] == {"world_size": 2, "ranks_agree": True}
    assert "distributed" not in first["metadata"]
    print(f"{example}: 1 process {one_s:.1f} s, 2 gloo processes {two_s:.1f} s")


FAILING_MODEL = '''
import os
import torch
from torch import nn


class Model(nn.Module):
    def __init__(self, fail_in):
        super().__init__()
        self.fail_in = fail_in
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

    def forward(self, x):
        if self.fail_in == "forward" and os.environ.get("RANK") == "1" and x.shape[0] > 2:
            raise RuntimeError("planted failure in the forward pass")
        return self.net(x)


def build(fail_in):
    if fail_in == "factory" and os.environ.get("RANK") == "1":
        raise RuntimeError("planted failure while loading")
    torch.manual_seed(0)
    return Model(fail_in)
'''


@pytest.mark.slow
@pytest.mark.parametrize("fail_in", ["factory", "forward"])
def test_a_failing_rank_fails_the_audit_with_one_line_and_no_bundle(tmp_path: Path, fail_in: str) -> None:
    (tmp_path / "planted_rank_model.py").write_text(FAILING_MODEL, encoding="utf-8")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", inputs=rng.normal(size=(40, 4)).astype("float32"),
             labels=rng.integers(0, 2, 40))
    spec = tmp_path / "audit.toml"
    spec.write_text(f'[model]\nname = "toy"\nfactory = "planted_rank_model:build"\n'
                    f'factory_args = {{ fail_in = "{fail_in}" }}\n\n[data]\nfile = "data.npz"\n'
                    'inputs = "inputs"\nlabels = "labels"\n', encoding="utf-8")
    done, _ = _audit([str(spec), "--out", str(tmp_path / "out"), "--select", "D101"], 2, tmp_path)
    assert done.returncode != 0
    ours = [line for line in done.stderr.splitlines() if line.startswith("mechaudit:")]
    assert len(ours) == 1 and ours[0].startswith("mechaudit: error: rank 1: ") and "planted failure" in ours[0], \
        done.stderr[-3000:]
    lines = done.stderr.splitlines()
    launcher = next(i for i, line in enumerate(lines) if "torch/distributed/elastic" in line)
    assert lines[:launcher] == ours, lines  # what the ranks print, before torchrun's own failure report
    assert not (tmp_path / "out").exists()
    # control: the same spec without a planted failure audits on one process
    control, _ = _audit([str(spec), "--out", str(tmp_path / "one"), "--select", "D101"], 1, tmp_path)
    assert control.returncode in (0, 1) and (tmp_path / "one" / "findings.json").is_file(), control.stderr


def _unequal(rank: int, world: int, init: str, result: str) -> None:
    """Rank 0 raises in its second chunk of exact checks (an out-of-memory error, turned into an error finding on that
    rank alone); rank 1 has more items and confirms them all. Then both exchange their results, as the engine's step
    does: a collective inside :func:`~mechaudit.deadline.confirm` would leave one rank waiting (20 s timeout here)."""
    from mechaudit import deadline

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=20))
    try:
        now = [0.0]
        deadline.clock = lambda: now[0]

        def charge(chunk: list[int]) -> None:
            now[0] += len(chunk)
            if rank == 0 and chunk[0] >= 1:
                raise MemoryError("rank-local out of memory")
        outcome: object
        with deadline.within(1000):
            try:
                outcome = deadline.confirm(list(range(5 if rank == 0 else 40)), charge, "checks")
            except MemoryError as error:
                outcome = str(error)
        gathered: list = [None] * world
        dist.all_gather_object(gathered, outcome)
        torch.save(gathered, f"{result}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_exact_checks_make_no_collective_so_a_failing_rank_leaves_none_waiting(tmp_path: Path) -> None:
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_unequal, args=(2, init, str(tmp_path / "result")), nprocs=2)
    for rank in range(2):
        assert torch.load(tmp_path / f"result.{rank}", weights_only=False) == ["rank-local out of memory",
                                                                                list(range(40))]
