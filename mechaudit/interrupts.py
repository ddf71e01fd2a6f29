"""Real interrupts (SIGINT, SIGTERM): one line, exit code 128 + the signal number (130, 143), never a traceback.

The command line installs :func:`install_handlers` first thing (start-up included). A signal then ends the process
at once, except inside :func:`raising` (while report files are written), where it raises :class:`Interrupted` so
that the half-written files are removed first. Ending at once is what makes start-up safe: an exception raised from
a signal handler while torch's native code runs an import-time callback aborts the interpreter. Nothing is lost:
before the reports are written, mechaudit has written nothing. It also means that a ``KeyboardInterrupt`` or
``SystemExit`` seen inside a rule was raised by the model's own code, and is an error of that rule.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager

HANDLED = (signal.SIGINT, signal.SIGTERM)
MESSAGE = "mechaudit: interrupted; no output was written"
_raising = 0


class Interrupted(KeyboardInterrupt):
    """A signal delivered to mechaudit while it writes files: the run stops after removing them."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _handle(signum: int, _frame) -> None:
    if _raising:
        raise Interrupted(signum)
    os.write(2, (MESSAGE + "\n").encode())
    os._exit(128 + signum)


def install_handlers() -> dict[int, object]:
    """Handle SIGINT and SIGTERM as described above (main thread only); returns the previous handlers."""
    return {signum: signal.signal(signum, _handle) for signum in HANDLED}


def restore_handlers(previous: dict[int, object]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


@contextmanager
def raising() -> Iterator[None]:
    """Inside: a signal raises :class:`Interrupted` (so ``finally`` / ``except BaseException`` clean-up runs)."""
    global _raising
    _raising += 1
    try:
        yield
    finally:
        _raising -= 1


def interruption(exc: BaseException | None) -> Interrupted | None:
    """The real interrupt behind ``exc`` (itself, or what it was raised from, as click's ``Abort``), if any."""
    while exc is not None:
        if isinstance(exc, Interrupted):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None
