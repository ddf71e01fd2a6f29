"""Single-file outputs (``diff --output``, ``edit --out``): checked before they are written, replaced atomically.

As with ``audit --out`` (:mod:`mechaudit.output`), a file is only ever replaced when it is absent, empty, or a
previous output of the same command (recognised by its content); anything else, a directory or a symbolic link,
is refused with one line, and nothing is written. The content goes to a temporary file beside the target, renamed
into place.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import InputError
from .interrupts import raising

_HEAD_BYTES = 1 << 16
_JSON_LIMIT = 64 * 2**20


def check_output_file(path: Path, option: str, kind: str, previous: Callable[[Path], bool]) -> None:
    """Refuse, with one line naming ``option``, a ``path`` that must not be replaced (not absent, empty, or a file
    ``previous`` recognises as a mechaudit ``kind``) or whose directory cannot be written."""
    shown = f"{option} {path}"
    if path.is_symlink():
        raise InputError(shown, "is a symbolic link; give a new file, or remove it yourself")
    if path.exists():
        if not path.is_file():
            raise InputError(shown, "exists and is not a file")
        try:
            replaceable = path.stat().st_size == 0 or previous(path)
        except OSError as exc:
            raise InputError(shown, f"cannot be read ({exc.strerror})") from None
        if not replaceable:
            raise InputError(shown, f"exists and is not a previous mechaudit {kind}; give a new file, or remove it "
                                    "yourself")
    _probe_writable(path, shown)


def write_text_file(path: Path, text: str, option: str, kind: str, previous: Callable[[Path], bool]) -> None:
    """Check ``path`` (:func:`check_output_file`) and replace it with ``text`` atomically."""
    check_output_file(path, option, kind, previous)
    with raising():  # an interrupt now removes the temporary file before it ends the run
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        except OSError as exc:
            raise InputError(f"{option} {path}", f"cannot be written ({exc.strerror})") from None
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                stream.write(text)
            os.chmod(temporary, 0o666 & ~current_umask())  # as readable as a plainly created file (mkstemp makes 0600)
            os.replace(temporary, path)
        except OSError as exc:
            raise InputError(f"{option} {path}", f"cannot be written ({exc.strerror})") from None
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)


def is_diff_output(path: Path) -> bool:
    """Whether ``path`` holds what ``mechaudit diff`` writes, in any of its formats (text, JSON, HTML)."""
    with open(path, "rb") as stream:
        head = stream.read(_HEAD_BYTES)
    text = head.decode("utf-8", errors="replace")
    if text.startswith("mechaudit diff: ") or (text.startswith("<!DOCTYPE html>")
                                                and "<title>mechaudit diff: " in text):
        return True
    if not text.lstrip().startswith("{") or path.stat().st_size > _JSON_LIMIT:
        return False
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError):
        return False
    return isinstance(data, dict) and {"baseline", "current", "summary", "verdict"} <= set(data)


def is_edit_weights(path: Path) -> bool:
    """Whether ``path`` is a safetensors file written by ``mechaudit edit`` (its metadata says so)."""
    with open(path, "rb") as stream:
        size = stream.read(8)
        if len(size) < 8:
            return False
        (length,) = struct.unpack("<Q", size)
        if length > 100 * 2**20:
            return False
        try:
            header = json.loads(stream.read(length))
        except (ValueError, RecursionError):
            return False
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return isinstance(metadata, dict) and "mechaudit_edit" in metadata


def is_edit_page(path: Path) -> bool:
    """Whether ``path`` is the HTML page ``mechaudit edit --rome`` writes beside the weights."""
    with open(path, "rb") as stream:
        head = stream.read(_HEAD_BYTES).decode("utf-8", errors="replace")
    return head.startswith("<!DOCTYPE html>") and "<title>mechaudit edit: " in head


def _probe_writable(path: Path, shown: str) -> None:
    """Create (and remove) a file where ``path`` will be written: a read-only place fails here, before the work."""
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    try:
        handle, probe = tempfile.mkstemp(prefix=f".{path.name}.", dir=parent)
    except OSError as exc:
        raise InputError(shown, f"cannot be written ({exc.strerror})") from None
    os.close(handle)
    os.remove(probe)


def current_umask() -> int:
    """The process's umask (read by setting a safe 0o022 for an instant, never a world-writable 0)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return umask
