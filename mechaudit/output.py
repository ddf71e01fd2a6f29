"""Atomic output: write every file into a temporary directory beside ``--out``, then move it into place.

An interrupted or failed run leaves the previous report intact and no half-written files.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .errors import InputError


def write_bundle(out: Path, files: dict[str, str | bytes]) -> None:
    """Replace directory ``out`` with exactly ``files`` (relative path -> content), atomically."""
    out = out.resolve()
    if out.exists() and not out.is_dir():
        raise InputError(str(out), "--out exists and is not a directory")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
        staging.chmod(_directory_mode())  # mkdtemp makes 0700; --out is an ordinary directory
    except OSError as exc:
        raise InputError(str(out), f"cannot write output here ({exc.strerror})") from None
    try:
        for relative, content in files.items():
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
        _swap_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _directory_mode() -> int:
    """The mode ``mkdir`` would give a new directory: 0777 less the process umask."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o777 & ~umask


def _swap_into_place(staging: Path, out: Path) -> None:
    if not out.exists():
        os.replace(staging, out)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.replace(out, retired / "previous")
    try:
        os.replace(staging, out)
    except BaseException:
        os.replace(retired / "previous", out)
        raise
    finally:
        shutil.rmtree(retired, ignore_errors=True)
