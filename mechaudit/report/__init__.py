"""Report writers: one small serializer per output format; none of them touches a check.

Add a format by adding a :class:`Writer` to :data:`WRITERS`; :func:`build_bundle` turns a result into the files
of an output directory, with ``manifest.json`` listing the SHA-256 of each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..findings import AuditResult
from .html_report import render_html
from .json_report import render_json
from .manifest import MANIFEST, build_manifest


@dataclass(frozen=True)
class Writer:
    filename: str
    render: Callable[[AuditResult], str | bytes]


WRITERS: dict[str, Writer] = {
    "json": Writer("findings.json", render_json),
    "html": Writer("report.html", render_html),
}
FORMATS = tuple(WRITERS)


def build_bundle(result: AuditResult, formats: tuple[str, ...]) -> dict[str, str | bytes]:
    """The files of an output directory (relative path -> content), ``manifest.json`` included."""
    files: dict[str, str | bytes] = {WRITERS[f].filename: WRITERS[f].render(result) for f in formats}
    files[MANIFEST] = build_manifest(result, files)
    return files


__all__ = ["FORMATS", "WRITERS", "Writer", "build_bundle", "render_html", "render_json"]
