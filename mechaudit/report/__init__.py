"""Report writers: one small serializer per output format; none of them touches a check.

Add a format by adding a :class:`Writer` to :data:`WRITERS`; :func:`build_bundle` turns a result into the files
of an output directory, with ``manifest.json`` listing the SHA-256 of each and ``statement.intoto.json`` (an
in-toto Statement over every file, the manifest included) beside it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..findings import AuditResult
from .attestation import STATEMENT, build_statement
from .circuit_files import circuit_files
from .document import figure_files
from .github import render_github
from .html_report import render_html
from .json_report import render_json
from .junit import render_junit
from .manifest import MANIFEST, manifest_dict
from .pdf_report import render_pdf, require_weasyprint
from .sarif import render_sarif


@dataclass(frozen=True)
class ReportSettings:
    """How the writers that have choices make them, and where the bundle goes (for relative input paths)."""

    #: SARIF: keep waived findings as results with an accepted ``suppression`` (default: leave them out).
    sarif_keep_waived: bool = False
    #: PDF: WeasyPrint's ``pdf_variant`` (``"pdf/a-3b"``, ``"pdf/ua-1"``), or None for a plain PDF.
    pdf_variant: str | None = None
    #: The bundle directory and the project root: the manifest keys inputs relative to the root.
    bundle_dir: Path | None = None
    project_root: Path | None = None


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


def build_bundle(result: AuditResult, formats: tuple[str, ...],
                 settings: ReportSettings | None = None) -> dict[str, str | bytes]:
    """The files of an output directory (relative path -> content), ``manifest.json`` and the in-toto statement
    included. The PDF comes last: it carries ``findings.json`` and the manifest of the other files attached."""
    settings = settings or ReportSettings()
    files: dict[str, str | bytes] = {}
    for name in formats:
        if name == "sarif":
            files[WRITERS[name].filename] = render_sarif(result, keep_waived=settings.sarif_keep_waived)
        elif name != "pdf":
            files[WRITERS[name].filename] = WRITERS[name].render(result)
    for extras in dict.fromkeys(WRITERS[f].extras for f in formats):  # each once, in format order
        if extras is not None:
            files.update(extras(result))
    files.update(circuit_files(result))
    files.update(result.attachments)
    if "pdf" in formats:
        attached = {"findings.json": files.get("findings.json") or render_json(result),
                    MANIFEST: _manifest(result, files, settings)[1]}
        files[WRITERS["pdf"].filename] = render_pdf(result, variant=settings.pdf_variant, attachments=attached)
    manifest, files[MANIFEST] = _manifest(result, files, settings)
    files[STATEMENT] = build_statement(result, files, manifest)
    return files


def _manifest(result: AuditResult, files: dict[str, str | bytes], settings: ReportSettings) -> tuple[dict, str]:
    manifest = manifest_dict(result, files, settings.bundle_dir, settings.project_root)
    return manifest, json.dumps(manifest, indent=2) + "\n"


def check_formats(formats: tuple[str, ...]) -> None:
    """Fail early, with one line, for a format that cannot be written here (e.g. pdf without WeasyPrint)."""
    for name in formats:
        if WRITERS[name].preflight is not None:
            WRITERS[name].preflight()


__all__ = ["FORMATS", "WRITERS", "ReportSettings", "Writer", "build_bundle", "check_formats", "render_html",
           "render_json", "render_pdf"]
