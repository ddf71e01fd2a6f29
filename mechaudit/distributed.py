"""Data-parallel audits under ``torchrun``: which samples this process audits, and how the parts are combined.

A tiny layer over :mod:`torch.distributed`. In a single process (no ``WORLD_SIZE`` > 1 in the environment) every
function is a no-op: :func:`shard` returns everything, :func:`gather` and :func:`reduce` return their input.
Under ``torchrun --nproc-per-node N -m mechaudit audit ...`` the process group is created by :func:`session`
(backend ``nccl`` on CUDA, ``gloo`` on the CPU), each rank takes a contiguous block of the samples, and the blocks
are gathered back in sample order, so every rank holds the same full artifacts. Failures are made collective by
:func:`step`: if the code inside it raises on any rank, it raises on every rank, the failing one with its own error
and the others with :class:`RankFailure` carrying that error's first line, so rank 0 can print one line.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import InputError, first_line

#: Seconds a collective waits for the other ranks before the audit fails (``MECHAUDIT_DIST_TIMEOUT``).
DEFAULT_TIMEOUT_S = 1800


class RankFailure(InputError):
    """Another rank failed; the audit stops on every rank (rank 0 reports the failing rank's first line)."""

    def __init__(self, rank: int, message: str) -> None:
        super().__init__(f"rank {rank}", message)
        self.rank = rank


def active() -> bool:
    """Whether this process is one of several ranks of an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes the bundle and prints."""
    return rank() == 0


def launched() -> bool:
    """Whether the environment says this process is one of several (``torchrun`` sets ``WORLD_SIZE``)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_device(device: torch.device) -> torch.device:
    """The device this rank runs on: on CUDA, the GPU of its local rank (``LOCAL_RANK``)."""
    if device.type == "cuda" and device.index is None and launched():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % max(torch.cuda.device_count(), 1))
    return device


@contextmanager
def session(device: torch.device) -> Iterator[None]:
    """Join the ``torchrun`` process group for the duration of an audit (nothing in a single process, or when the
    caller already created the group)."""
    if not launched() or (dist.is_available() and dist.is_initialized()):
        yield
        return
    if not dist.is_available():
        raise InputError("torchrun", "this PyTorch build has no torch.distributed")
    backend = os.environ.get("MECHAUDIT_DIST_BACKEND") or backend_for(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = timedelta(seconds=int(os.environ.get("MECHAUDIT_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)))
    dist.init_process_group(backend, timeout=timeout)
    try:
        yield
    finally:
        dist.destroy_process_group()


def backend_for(device: torch.device) -> str:
    """``nccl`` when every rank of this node has a GPU of its own, else ``gloo`` (the CPU; NCCL refuses two ranks
    on one GPU, so several ranks sharing a GPU exchange their parts through host memory)."""
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return "nccl" if device.type == "cuda" and ranks_here <= torch.cuda.device_count() else "gloo"


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def shard(count: int) -> slice:
    """This rank's contiguous block of ``count`` samples (all of them in a single process)."""
    size, me = world_size(), rank()
    if size > 1 and count < size:
        raise InputError("torchrun", f"{count} audit samples cannot be split over {size} ranks")
    return slice(me * count // size, (me + 1) * count // size)


def gather(part: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``part`` along dimension 0, in rank order (the shards' sample order); on every
    rank, on ``part``'s device."""
    if not active():
        return part
    device, comm = part.device, _comm_device()
    sizes: list[int] = [0] * world_size()
    dist.all_gather_object(sizes, int(part.shape[0]))
    padded = torch.zeros((max(sizes), *part.shape[1:]), dtype=part.dtype, device=comm)
    padded[:part.shape[0]] = part.to(comm)
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)]).to(device)


_OPS = {"sum": "SUM", "max": "MAX", "min": "MIN"}


def reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Element-wise ``sum``, ``max`` or ``min`` of ``tensor`` over all ranks, on every rank."""
    if not active():
        return tensor
    combined = tensor.detach().clone().to(_comm_device())
    dist.all_reduce(combined, op=getattr(dist.ReduceOp, _OPS[op]))
    return combined.to(tensor.device)


def same_everywhere(value: object) -> bool:
    """Whether every rank holds an equal ``value`` (e.g. a digest of its findings)."""
    if not active():
        return True
    values: list[object] = [None] * world_size()
    dist.all_gather_object(values, value)
    return all(v == values[0] for v in values)


@contextmanager
def step() -> Iterator[None]:
    """Run rank-local work (no collectives inside); if it raises on any rank, raise on every rank."""
    if not active():
        yield
        return
    try:
        yield
    except BaseException as exc:
        _agree(f"{type(exc).__name__}: {exc}" if not isinstance(exc, InputError) else str(exc))
        raise
    _agree(None)


def _agree(failure: str | None) -> None:
    failures: list[str | None] = [None] * world_size()
    dist.all_gather_object(failures, None if failure is None else first_line(failure))
    if failure is None:
        for index, message in enumerate(failures):
            if message is not None:
                raise RankFailure(index, message)
