"""``manifest.json``: the SHA-256 of every file written and of every input, so a reviewer can verify a bundle."""

from __future__ import annotations

import hashlib
import json

from ..findings import AuditResult

MANIFEST = "manifest.json"


def sha256_bytes(content: str | bytes) -> str:
    return hashlib.sha256(content.encode("utf-8") if isinstance(content, str) else content).hexdigest()


def build_manifest(result: AuditResult, files: dict[str, str | bytes]) -> str:
    meta = result.metadata
    manifest = {
        "manifest_version": "1.0",
        "tool": meta["tool"],
        "files": {name: sha256_bytes(content) for name, content in sorted(files.items())},
        "inputs": {"model": meta["model"]["sha256"], "data": meta["data"]["sha256"],
                   "rulebook": {meta["rulebook"]["name"]: meta["rulebook"]["sha256"]}},
    }
    return json.dumps(manifest, indent=2) + "\n"
