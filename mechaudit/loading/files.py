"""Checks every input file passes before it is read: exists, is a regular file, non-empty, not too large."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError

DEFAULT_MAX_BYTES = 4096 * 2**20


def check_input_file(path: Path, what: str, max_bytes: int = DEFAULT_MAX_BYTES) -> Path:
    if not path.exists():
        raise InputError(str(path), f"{what} file not found")
    if not path.is_file():
        raise InputError(str(path), f"{what} path is not a file")
    size = path.stat().st_size
    if size == 0:
        raise InputError(str(path), f"{what} file is empty")
    if size > max_bytes:
        raise InputError(str(path), f"{what} file is {size / 2**20:.0f} MiB, above the limit of "
                                    f"{max_bytes / 2**20:.0f} MiB (raise it with --max-file-mb)")
    if not os.access(path, os.R_OK):
        raise InputError(str(path), f"{what} file is not readable (permission denied)")
    return path
