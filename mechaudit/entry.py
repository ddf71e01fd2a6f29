"""The ``mechaudit`` console entry point: signal handlers first, then the (slower) command line import, so that
Ctrl-C or SIGTERM during start-up exits with 130 / 143 and one line, never a traceback or a silent death."""

from __future__ import annotations

from .interrupts import install_handlers


def main(argv: list[str] | None = None) -> int:
    install_handlers()
    from .cli import main as run

    return run(argv)
