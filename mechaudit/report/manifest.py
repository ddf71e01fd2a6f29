"""``manifest.json``: the SHA-256 of every file written and of every input, so a reviewer can verify a bundle.

Inputs (model and data files) are keyed by their path relative to the project root (the nearest ancestor of
the spec with ``.git`` or ``pyproject.toml``), and ``inputs.root`` says where that root is relative to the
bundle directory, so a repository moved or cloned elsewhere with its bundle still verifies, and a bundle
separated from its inputs says so. An input outside the project keeps its absolute path; an in-memory input
(``<inputs>``, from the Python API) keeps its placeholder name.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from ..findings import AuditResult
from ..portable import relative_to_root

MANIFEST = "manifest.json"
MANIFEST_VERSION = "1.1"
FILE_INPUTS = ("model", "data")  # input groups recorded as {path: digest}; the rulebook is recorded by name


def sha256_bytes(content: str | bytes) -> str:
    return hashlib.sha256(content.encode("utf-8") if isinstance(content, str) else content).hexdigest()


def manifest_dict(result: AuditResult, files: dict[str, str | bytes], bundle_dir: Path | None = None,
                  project_root: Path | None = None) -> dict[str, Any]:
    """The manifest of ``files``; with ``bundle_dir`` and ``project_root`` known, inputs are keyed relative."""
    meta = result.metadata
    inputs: dict[str, Any] = {}
    if bundle_dir is not None and project_root is not None:
        inputs["root"] = Path(os.path.relpath(project_root.resolve(), bundle_dir.resolve())).as_posix()
    for group in FILE_INPUTS:
        inputs[group] = {relative_to_root(name, project_root): digest
                         for name, digest in sorted(meta[group]["sha256"].items())}
    inputs["rulebook"] = {meta["rulebook"]["name"]: meta["rulebook"]["sha256"]}
    return {"manifest_version": MANIFEST_VERSION, "tool": meta["tool"],
            "files": {name: sha256_bytes(content) for name, content in sorted(files.items())}, "inputs": inputs}
