"""Locate the rulebooks and templates, in a wheel (``mechaudit/_data``) or in a source checkout."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """Return the ``rules`` or ``templates`` directory shipped with mechaudit."""
    for candidate in (_PACKAGE / "_data" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"mechaudit installation is missing its '{name}' directory")


def rulebook_path(name: str) -> Path:
    """Path of a built-in rulebook such as ``default``."""
    return data_dir("rules") / f"{name}.toml"


def builtin_rulebooks() -> list[str]:
    return sorted(p.stem for p in data_dir("rules").glob("*.toml"))
