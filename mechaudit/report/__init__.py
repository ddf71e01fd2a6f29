"""Report writers: one small serializer per output format; none of them touches a check.

Add a format by adding a :class:`Writer` to :data:`WRITERS`; :func:`build_bundle` turns a result into the files
of an output directory, with ``manifest.json`` listing the SHA-256 of each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..findings import AuditResult
from .circuit_files import circuit_files
from .document import figure_files
from .github import render_github
from .html_report import render_html
from .json_report import render_json
from .junit import render_junit
from .manifest import MANIFEST, build_manifest
from .pdf_report import render_pdf, require_weasyprint
from .sarif import render_sarif


@dataclass(frozen=True)
class Writer:
    filename: str
    render: Callable[[AuditResult], str | bytes]
    #: More files of the bundle that go with this format (the evidence figures: ``figures/*.svg``).
    extras: Callable[[AuditResult], dict[str, str | bytes]] | None = None
    #: Raises :class:`~mechaudit.errors.InputError` when the format cannot be written here (a missing extra).
    preflight: Callable[[], object] | None = None


WRITERS: dict[str, Writer] = {
    "json": Writer("findings.json", render_json),
    "html": Writer("report.html", render_html, extras=figure_files),
    "pdf": Writer("report.pdf", render_pdf, extras=figure_files, preflight=require_weasyprint),
    "sarif": Writer("findings.sarif", render_sarif),
    "junit": Writer("junit.xml", render_junit),
    "github": Writer("annotations.txt", render_github),  # also printed to stdout by `mechaudit audit`
}
FORMATS = tuple(WRITERS)


def build_bundle(result: AuditResult, formats: tuple[str, ...]) -> dict[str, str | bytes]:
    """The files of an output directory (relative path -> content), ``manifest.json`` included."""
    files: dict[str, str | bytes] = {WRITERS[f].filename: WRITERS[f].render(result) for f in formats}
    for extras in dict.fromkeys(WRITERS[f].extras for f in formats):  # each once, in format order
        if extras is not None:
            files.update(extras(result))
    files.update(circuit_files(result))
    files.update(result.attachments)
    files[MANIFEST] = build_manifest(result, files)
    return files


def check_formats(formats: tuple[str, ...]) -> None:
    """Fail early, with one line, for a format that cannot be written here (e.g. pdf without WeasyPrint)."""
    for name in formats:
        if WRITERS[name].preflight is not None:
            WRITERS[name].preflight()


__all__ = ["FORMATS", "WRITERS", "Writer", "build_bundle", "check_formats", "render_html", "render_json",
           "render_pdf"]
