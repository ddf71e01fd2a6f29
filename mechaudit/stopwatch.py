"""Timing calls on a device: one timing, the fastest of several, a call on one CPU thread, and marks of the present
moment in the device's order of work (CUDA events on a GPU)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import torch

T = TypeVar("T")


def timed(run: Callable[[], Any], device: torch.device) -> float:
    """Seconds ``run()`` takes (waiting for the GPU to finish)."""
    sync(device)
    start = time.perf_counter()
    run()
    sync(device)
    return time.perf_counter() - start


def fastest_of(timing: Callable[[], float], repeats: int, budget: float, first: float | None = None) -> float:
    """The least of ``repeats`` results of ``timing()`` (``first`` counting as the first where given), fewer once
    they took ``budget`` seconds in all: load only ever adds time, and a long timing is the least disturbed by it
    and the costliest to repeat."""
    best = spent = first if first is not None else timing()
    for _ in range(repeats - 1):
        if spent > budget:
            break
        latest = timing()
        best, spent = min(best, latest), spent + latest
    return best


def least(*seconds: float | None) -> float | None:
    """The least of ``seconds`` that were measured (not None); None where none was."""
    measured = [value for value in seconds if value is not None]
    return min(measured) if measured else None


def on_one_thread(run: Callable[[], T], device: torch.device,
                  warm_up: Callable[[], Any] | None = None) -> T | None:
    """``run()`` on one CPU thread (no thread waits on another), after ``warm_up()`` where given (setting the thread
    count clears oneDNN's cache: the next call is cold); None on a GPU or where torch runs one thread already.
    Torch's thread count is restored however ``run`` ends."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads < 2:
        return None
    try:
        torch.set_num_threads(1)  # within the try: a time-out right after it still restores the threads
        if warm_up is not None:
            warm_up()
        return run()
    finally:
        torch.set_num_threads(threads)


def marker(device: torch.device) -> Callable[[], Any]:
    """A mark of the present moment in the device's order of work: a recorded CUDA event (no waiting for the GPU),
    else the CPU's clock."""
    if device.type != "cuda":
        return time.perf_counter

    def event() -> Any:
        recorded = torch.cuda.Event(enable_timing=True)
        recorded.record()
        return recorded
    return event


def elapsed(start: Any, end: Any) -> float:
    """Seconds between two marks of :func:`marker` (CUDA events once the GPU has finished them)."""
    return start.elapsed_time(end) / 1e3 if isinstance(start, torch.cuda.Event) else end - start


def sync(device: torch.device) -> None:
    """Wait for the GPU's queued work (nothing on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
