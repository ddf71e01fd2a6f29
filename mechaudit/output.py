"""The output directory (``--out``): checked before the audit runs, replaced atomically after it.

``--out`` is only ever replaced when it is absent, empty, or a previous mechaudit bundle: a directory whose
``manifest.json`` was written by mechaudit and which holds nothing the manifest does not list (its in-toto
statement aside). Anything else
(the working directory, a directory holding the spec, a mount point, a directory with other files) is refused
before the audit runs, as is a place that cannot be written. Every file is written into a temporary directory
beside ``--out`` and swapped in with two renames, with SIGINT/SIGTERM held back between them; temporaries left by
a run that died (``.NAME.tmp-PID-*``, ``.NAME.old-PID-*``) are removed, or restored, by the next run.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import InputError
from .interrupts import raising
from .report.attestation import STATEMENT
from .report.manifest import MANIFEST

_PROBE_BYTES = 1 << 16
_LEGACY_STALE_SECONDS = 3600  # temporaries named without a process id: stale once this old


def check_out_dir(out: Path, spec: Path | None = None) -> Path:
    """Refuse, with one line naming ``--out``, any output directory mechaudit must not replace or cannot write;
    returns it resolved. Called before the audit runs, and again just before the swap."""
    shown = f"--out {out}"
    if str(out) in ("", "."):
        raise InputError(f"--out '{out}'", "is the working directory (an empty --out, e.g. an unset variable, "
                                           "means '.'); give a new directory for the reports")
    resolved = out.resolve()
    cwd = Path.cwd().resolve()
    if cwd.is_relative_to(resolved):
        raise InputError(shown, "is or contains the working directory; give a new directory for the reports")
    if spec is not None and spec.resolve().is_relative_to(resolved):
        raise InputError(shown, f"holds the spec {spec}; give a new directory for the reports")
    _recover_interrupted_swap(resolved)
    if resolved.exists() or resolved.is_symlink():
        if not resolved.is_dir():
            raise InputError(shown, "exists and is not a directory")
        if os.path.ismount(resolved):
            raise InputError(shown, "is a mount point, which cannot be replaced; give a directory inside it")
        unexpected = foreign_entry(resolved)
        if unexpected is not None:
            raise InputError(shown, f"is not empty and not a previous mechaudit report ({unexpected}); give a new "
                                    "or empty directory, or remove it yourself")
    _probe_writable(resolved, shown)
    return resolved


def foreign_entry(directory: Path) -> str | None:
    """Why ``directory`` is not replaceable (the first thing in it that a mechaudit bundle does not hold), or None
    when it is empty or a previous bundle."""
    try:
        entries = present_files(directory, strict=True)
    except OSError as exc:
        return f"cannot be listed: {exc.strerror}"
    if not entries:
        return None
    listed = _manifest_files(directory / MANIFEST)
    if listed is None:
        return f"'{sorted(entries)[0]}' is there and no manifest.json written by mechaudit"
    extra = sorted(entries - listed - {MANIFEST, STATEMENT})
    return f"'{extra[0]}' is not listed in its manifest.json" if extra else None


def present_files(directory: Path, strict: bool = False) -> set[str]:
    """Every file and link under ``directory`` (relative POSIX paths); links to folders are not followed. ``strict``:
    a folder that cannot be read raises instead of being passed over."""
    found = set()
    for root, folders, files in os.walk(directory, onerror=_raise if strict else None):
        links = [name for name in folders if os.path.islink(os.path.join(root, name))]
        found.update((Path(root) / name).relative_to(directory).as_posix() for name in (*files, *links))
    return found


def _raise(exc: OSError) -> None:
    raise exc


def _manifest_files(path: Path) -> set[str] | None:
    """The files a mechaudit ``manifest.json`` lists, or None when ``path`` is not one."""
    if path.is_symlink() or not path.is_file() or path.stat().st_size > 64 * 2**20:
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("tool"), dict) \
            or manifest["tool"].get("name") != "mechaudit" or not isinstance(manifest.get("files"), dict):
        return None
    return {name for name in manifest["files"] if isinstance(name, str)}


def _probe_writable(out: Path, shown: str) -> None:
    """Write (and remove) a small file where the reports will be staged: a read-only place or a full disk fails
    here, before the audit, instead of after it."""
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    with raising():
        _probe(out, parent, shown)


def _probe(out: Path, parent: Path, shown: str) -> None:
    try:
        probe = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=parent))
    except OSError as exc:
        raise InputError(shown, f"cannot be written ({exc.strerror})") from None
    try:
        with open(probe / "probe", "wb") as handle:
            handle.write(b"\0" * _PROBE_BYTES)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise InputError(shown, f"cannot be written ({exc.strerror})") from None
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def write_bundle(out: Path, files: dict[str, str | bytes], spec: Path | None = None) -> None:
    """Replace directory ``out`` with exactly ``files`` (relative path -> content), atomically."""
    with raising():  # an interrupt now removes the staged files before it ends the run
        _write_bundle(check_out_dir(out, spec), files)


def _write_bundle(out: Path, files: dict[str, str | bytes]) -> None:
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=parent))
        staging.chmod(_directory_mode())  # mkdtemp makes 0700; --out is an ordinary directory
    except OSError as exc:
        raise InputError(f"--out {out}", f"cannot be written ({exc.strerror})") from None
    try:
        for relative, content in files.items():
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
        _swap_into_place(staging, out)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        reason = "the disk is full" if exc.errno == errno.ENOSPC else exc.strerror
        raise InputError(f"--out {out}", f"cannot be written ({reason}); the previous report is intact") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    clean_stale(out)


def _directory_mode() -> int:
    """The mode ``mkdir`` would give a new directory: 0777 less the process umask."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o777 & ~umask


def _swap_into_place(staging: Path, out: Path) -> None:
    with _signals_held():
        if not out.exists():
            os.replace(staging, out)
            return
        retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{os.getpid()}-", dir=out.parent))
        os.replace(out, retired / "previous")
        try:
            os.replace(staging, out)
        except BaseException:
            os.replace(retired / "previous", out)
            raise
        finally:
            shutil.rmtree(retired, ignore_errors=True)  # killed before this: the next run removes it


@contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back until the block ends (then they are delivered): the renames complete or are
    undone. Python runs signal handlers in the main thread whichever thread the kernel picked, so deferring them
    in the handler works in a process with threads too (a per-thread signal mask would not)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, lambda signum, _frame: pending.append(signum)) for signum in held}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(pending):
            signal.raise_signal(signum)


def _temporaries(out: Path) -> Iterator[tuple[Path, str, int | None]]:
    """The staging (``tmp``) and retired (``old``) directories of ``out``'s runs, with the process id that made
    them (None for names from older versions)."""
    try:
        entries = list(out.parent.iterdir())
    except OSError:
        return
    for entry in entries:
        for kind in ("tmp", "old"):
            prefix = f".{out.name}.{kind}-"
            if entry.name.startswith(prefix):
                head = entry.name[len(prefix):].split("-", 1)[0]
                yield entry, kind, int(head) if head.isdigit() and "-" in entry.name[len(prefix):] else None


def _stale(entry: Path, pid: int | None) -> bool:
    if pid is None:
        try:
            return time.time() - entry.lstat().st_mtime > _LEGACY_STALE_SECONDS
        except OSError:
            return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, owned by someone else
        return False
    return False


def _recover_interrupted_swap(out: Path) -> None:
    """A run killed between its two renames left ``out`` missing and the previous report retired: put it back."""
    if out.exists() or out.is_symlink():
        return
    for entry, kind, pid in _temporaries(out):
        previous = entry / "previous"
        if kind == "old" and _stale(entry, pid) and previous.is_dir():
            os.replace(previous, out)
            shutil.rmtree(entry, ignore_errors=True)
            return


def clean_stale(out: Path) -> None:
    """Remove the temporaries of ``out`` that runs which have died left behind."""
    for entry, _, pid in _temporaries(out):
        if _stale(entry, pid) and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
