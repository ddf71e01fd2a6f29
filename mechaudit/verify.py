"""``mechaudit verify DIR``: check an evidence bundle against its ``manifest.json``.

Every file the manifest lists must be there with the same SHA-256, and no other file may be (the manifest itself
aside). The inputs it records (model and data files) are re-hashed where they can still be reached; an input
that cannot be reached is reported, not counted as a mismatch. A missing or malformed manifest is bad input.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .errors import InputError
from .loading.hashing import sha256_file
from .report.manifest import MANIFEST

_DIGEST = re.compile(r"^[0-9a-f]{64}$")
FILE_INPUTS = ("model", "data")  # input groups recorded as {path: digest}; the rulebook is recorded by name


@dataclass
class Verification:
    """What a verification found: mismatches (``problems``), files that matched, and inputs not re-hashed."""

    directory: Path
    problems: list[str] = field(default_factory=list)
    matched: int = 0
    inputs_matched: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        """What ``mechaudit verify`` prints: one line per problem and note, then a verdict."""
        inputs = f", {self.inputs_matched} inputs re-hashed and unchanged" if self.inputs_matched else ""
        verdict = (f"OK: {self.matched} files match {self.directory / MANIFEST}{inputs}" if self.ok else
                   f"FAILED: {len(self.problems)} mismatches against {self.directory / MANIFEST}")
        return [*self.problems, *self.notes, verdict]


def verify_bundle(directory: Path, check_inputs: bool = True) -> Verification:
    """Compare ``directory`` with its manifest; raises :class:`InputError` when there is no valid manifest."""
    files, inputs = load_manifest(directory)
    outcome = Verification(directory)
    present = _present(directory)
    for name, digest in sorted(files.items()):
        path = directory / name
        if name not in present:
            outcome.problems.append(f"missing: {name}")
        elif path.is_symlink() or not path.is_file():
            outcome.problems.append(f"not a regular file: {name}")
        elif sha256_file(path) != digest:
            outcome.problems.append(f"changed: {name}")
        else:
            outcome.matched += 1
    outcome.problems.extend(f"not in the manifest: {name}" for name in sorted(present - set(files) - {MANIFEST}))
    if check_inputs:
        _check_inputs(inputs, outcome)
    return outcome


def _present(directory: Path) -> set[str]:
    """Every file (and link) under ``directory``, as a relative POSIX path; links to folders are not followed."""
    found = set()
    for root, folders, files in os.walk(directory):
        links = [name for name in folders if os.path.islink(os.path.join(root, name))]
        for name in (*files, *links):
            found.add((Path(root) / name).relative_to(directory).as_posix())
    return found


def load_manifest(directory: Path) -> tuple[dict[str, str], dict]:
    """The manifest's ``files`` (checked: safe relative paths, SHA-256 digests) and its ``inputs``."""
    if not directory.is_dir():
        raise InputError(str(directory), "not a directory (expected a bundle written by mechaudit audit --out)")
    path = directory / MANIFEST
    if not path.is_file():
        raise InputError(str(path), "not found: this directory is not a mechaudit bundle")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(str(path), f"not valid JSON ({exc})") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        raise InputError(str(path), "has no 'files' table")
    for name, digest in files.items():
        if not _safe_relative(name):
            raise InputError(str(path), f"lists a path outside the bundle: {name!r}")
        if not isinstance(digest, str) or not _DIGEST.match(digest):
            raise InputError(str(path), f"the digest of {name!r} is not a SHA-256 hex digest")
    inputs = manifest.get("inputs", {})
    return files, inputs if isinstance(inputs, dict) else {}


def _safe_relative(name: str) -> bool:
    parts = PurePosixPath(name).parts
    return bool(parts) and "\\" not in name and not PurePosixPath(name).is_absolute() and ".." not in parts \
        and name != MANIFEST


def _check_inputs(inputs: dict, outcome: Verification) -> None:
    for group in FILE_INPUTS:
        recorded = inputs.get(group)
        for name, digest in (recorded.items() if isinstance(recorded, dict) else ()):
            path = Path(name)
            if not path.is_file():
                outcome.notes.append(f"input not reachable, not re-hashed: {name}")
            elif sha256_file(path) != digest:
                outcome.problems.append(f"input changed since the audit: {name}")
            else:
                outcome.inputs_matched += 1
