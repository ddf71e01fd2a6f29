"""Paths as a bundle records them: relative to the project root, absolute only for what lies outside it.

A report moved to another machine (or a sample report checked into a repository) must not carry the absolute
paths of the machine that made it; inputs inside the spec's project are recorded relative to its root (the
nearest ancestor of the spec with ``pyproject.toml`` or ``.git``), like the manifest does. An ``error``
finding's traceback names its frames the same way (:func:`portable_traceback`).
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path


def relative_to_root(name: str, root: Path | None) -> str:
    """``name`` relative to ``root`` when it is an absolute path inside it; anything else unchanged."""
    if root is None or name.startswith("<") or not os.path.isabs(name):
        return name
    path, root = Path(name).resolve(), root.resolve()
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else name


def relative_keys(hashes: dict[str, str], root: Path | None) -> dict[str, str]:
    """A ``{path: digest}`` table keyed relative to ``root`` (see :func:`relative_to_root`)."""
    return {relative_to_root(name, root): digest for name, digest in hashes.items()}


def portable_command(argv: list[str], cwd: Path) -> str:
    """The command line as a shell string, with absolute paths under ``cwd`` made relative to it (also in
    ``--opt=/path``), so that it reads the same on every machine that runs it from the project directory."""
    def part(arg: str) -> str:
        if arg.startswith("--") and "=" in arg:
            key, value = arg.split("=", 1)
            return f"{key}={relative_to_root(value, cwd)}"
        return relative_to_root(arg, cwd)
    return shlex.join(part(arg) for arg in argv)


#: A traceback's frame line names its file so: ``File "/path/to/file.py", line 3, in f``.
_FRAME = re.compile(r'File "([^"\n]+)"')
#: What may precede a folder's path when it starts a path (not a character of a longer path).
_PATH_START = r"(?<![\w.~/\\-])"
#: Any other absolute path left in a message (POSIX ``/a/b`` or Windows ``C:\\a\\b``), up to a space or quote;
#: ``:`` may not precede it, so that a URL's ``//host/path`` is no path.
_ABSOLUTE = re.compile(r"(?<![\w.~/\\:-])(?:/|[A-Za-z]:[\\/])[^\s'\"()\[\]{}<>,;|]*[^\s'\"()\[\]{}<>,;|/\\]")


def portable_traceback(text: str, root: Path | None) -> str:
    """``text`` (a traceback, or a message) with this machine's absolute paths written relative to where they lie:
    the project ``root``, mechaudit's own folder, or a folder Python imports from (site-packages, the standard
    library), so that a frame reads ``File "torch/nn/modules/module.py", line 1775`` on every machine. Any other
    absolute path (a frame's file or a path in a message, outside all of them) keeps its last part alone."""
    folders = sorted(_import_folders(root), key=len, reverse=True)
    if folders:
        text = re.sub(_PATH_START + "(?:" + "|".join(map(re.escape, folders)) + ")", "", text)
    text = _FRAME.sub(lambda m: f'File "{_last_part(m[1])}"' if _is_absolute(m[1]) else m[0], text)
    return _ABSOLUTE.sub(lambda m: _last_part(m[0]), text)


def _is_absolute(path: str) -> bool:
    return path.startswith(("/", "\\")) or re.match(r"[A-Za-z]:[\\/]", path) is not None


def _last_part(path: str) -> str:
    """The last part of a POSIX or Windows path, on any machine: ``/a/b/c.py`` and ``C:\\a\\c.py`` -> ``c.py``."""
    return re.split(r"[\\/]", path.rstrip("\\/"))[-1] or path


def _import_folders(root: Path | None) -> set[str]:
    """Absolute folders (with a trailing separator, as given and resolved) whose files a traceback names
    relative to them; never a filesystem root."""
    candidates = [root, Path(__file__).resolve().parent.parent, *sys.path]
    folders = set()
    for candidate in candidates:
        if not candidate or not os.path.isabs(candidate):
            continue
        for form in (str(candidate), os.path.realpath(candidate)):
            path = Path(form)
            if path.parent != path:
                folders.add(str(path).rstrip(os.sep) + os.sep)
    return folders
