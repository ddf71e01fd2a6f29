"""``mechaudit verify DIR``: check an evidence bundle against its ``manifest.json``.

Every file the manifest lists must be there with the same SHA-256, and no other file may be (the manifest and
the in-toto statement aside); the statement's subjects, when it is there, must match the files too. The inputs
it records (model and data files, relative to the project root that ``inputs.root`` locates from the bundle)
are re-hashed: a changed input and an input that cannot be reached any more (moved, deleted) are mismatches;
``--no-inputs`` skips them. A manifest comes from elsewhere, so only inputs inside the bundle's own project
(the nearest folder above the bundle holding ``pyproject.toml`` or ``.git``, else the bundle's parent) and at
most :data:`MAX_INPUT_BYTES` are read; any other (an input outside the project, a bundle copied away from it)
is noted, without revealing whether it exists. In-memory inputs (``<inputs>``, from the Python API) cannot be
re-hashed and are noted. A missing or malformed manifest is bad input.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .errors import InputError
from .loading.files import DEFAULT_MAX_BYTES
from .loading.hashing import sha256_file
from .output import present_files
from .report.attestation import STATEMENT
from .report.manifest import FILE_INPUTS, MANIFEST
from .spec import project_root
from .text_safety import terminal_safe

_DIGEST = re.compile(r"^[0-9a-f]{64}$")
MAX_INPUT_BYTES = DEFAULT_MAX_BYTES  # --max-file-mb's default: inputs larger than an audit reads are not re-hashed


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
        return [terminal_safe(line) for line in (*self.problems, *self.notes, verdict)]


def verify_bundle(directory: Path, check_inputs: bool = True) -> Verification:
    """Compare ``directory`` with its manifest; raises :class:`InputError` when there is no valid manifest."""
    files, inputs = load_manifest(directory)
    outcome = Verification(directory)
    present = present_files(directory)
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
    outcome.problems.extend(f"not in the manifest: {name}"
                            for name in sorted(present - set(files) - {MANIFEST, STATEMENT}))
    if STATEMENT in present:
        _check_statement(directory, {**files, MANIFEST: sha256_file(directory / MANIFEST)}, outcome)
    if check_inputs:
        _check_inputs(directory, inputs, outcome)
    return outcome


def _check_statement(directory: Path, expected: dict[str, str], outcome: Verification) -> None:
    """The in-toto statement must name exactly the bundle's files (manifest included) with their digests."""
    try:
        statement = json.loads((directory / STATEMENT).read_text(encoding="utf-8"))
        subjects = {s["name"]: s["digest"]["sha256"] for s in statement["subject"]}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        outcome.problems.append(f"{STATEMENT}: not an in-toto statement with named sha256 subjects")
        return
    for name in sorted(set(expected) | set(subjects)):
        if subjects.get(name) != expected.get(name):
            outcome.problems.append(f"{STATEMENT}: subject {name} does not match the bundle")


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
    except RecursionError:
        raise InputError(str(path), "not valid JSON (nested too deeply)") from None
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


def _check_inputs(directory: Path, inputs: dict, outcome: Verification) -> None:
    confined = project_root(directory.resolve().parent)  # the project the bundle lies in
    root = inputs.get("root")
    base = directory / root if isinstance(root, str) else directory
    for group in FILE_INPUTS:
        recorded = inputs.get(group)
        for name, digest in (recorded.items() if isinstance(recorded, dict) else ()):
            if name.startswith("<"):
                outcome.notes.append(f"input held in memory by the audit, not re-hashed: {name}")
                continue
            path = base / name  # an absolute name (an input outside the project) stays as it is
            if not path.resolve().is_relative_to(confined):
                outcome.notes.append(f"input outside the project root {confined}, not re-hashed: {name}")
            elif not path.is_file():
                outcome.problems.append(f"input not reachable (moved or deleted?): {name} "
                                        "(--no-inputs checks the bundle alone)")
            elif path.stat().st_size > MAX_INPUT_BYTES:
                outcome.notes.append(f"input larger than {MAX_INPUT_BYTES // 2**20} MiB, not re-hashed: {name}")
            elif sha256_file(path) != digest:
                outcome.problems.append(f"input changed since the audit: {name}")
            else:
                outcome.inputs_matched += 1
