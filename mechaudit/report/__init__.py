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


#: Files written so far, by relative path (a writer that runs after the others reads them).
Files = dict[str, str | bytes]


@dataclass(frozen=True)
class Writer:
    filename: str
    #: The file's content from the result, the report settings and the files written before it.
    render: Callable[[AuditResult, ReportSettings, Files], str | bytes]
    #: More files of the bundle that go with this format (the evidence figures: ``figures/*.svg``).
    extras: Callable[[AuditResult], Files] | None = None
    #: Raises :class:`~mechaudit.errors.InputError` when the format cannot be written here (a missing extra).
    preflight: Callable[[], object] | None = None
    #: Written after every other file of the bundle (the PDF, which attaches some of them).
    last: bool = False


def _pdf(result: AuditResult, settings: ReportSettings, files: Files) -> bytes:
    """The PDF, carrying ``findings.json`` and the manifest of the other files attached."""
    attached = {"findings.json": files.get("findings.json") or render_json(result),
                MANIFEST: _manifest(result, files, settings)[1]}
    return render_pdf(result, variant=settings.pdf_variant, attachments=attached)


WRITERS: dict[str, Writer] = {
    "json": Writer("findings.json", lambda result, settings, files: render_json(result)),
    "html": Writer("report.html", lambda result, settings, files: render_html(result), extras=figure_files),
    "pdf": Writer("report.pdf", _pdf, extras=figure_files, preflight=require_weasyprint, last=True),
    "sarif": Writer("findings.sarif",
                    lambda result, settings, files: render_sarif(result, keep_waived=settings.sarif_keep_waived)),
    "junit": Writer("junit.xml", lambda result, settings, files: render_junit(result)),
    # also printed to stdout by `mechaudit audit`
    "github": Writer("annotations.txt", lambda result, settings, files: render_github(result)),
}
FORMATS = tuple(WRITERS)


def build_bundle(result: AuditResult, formats: tuple[str, ...],
                 settings: ReportSettings | None = None) -> Files:
    """The files of an output directory (relative path -> content), ``manifest.json`` and the in-toto statement
    included. Writers marked ``last`` (the PDF) run after every other file is in place."""
    settings = settings or ReportSettings()
    files: Files = {}
    writers = [WRITERS[name] for name in formats]
    for writer in (w for w in writers if not w.last):
        files[writer.filename] = writer.render(result, settings, files)
    for extras in dict.fromkeys(w.extras for w in writers):  # each once, in format order
        if extras is not None:
            files.update(extras(result))
    files.update(circuit_files(result))
    files.update(result.attachments)
    for writer in (w for w in writers if w.last):
        files[writer.filename] = writer.render(result, settings, files)
    manifest, files[MANIFEST] = _manifest(result, files, settings)
    files[STATEMENT] = build_statement(result, files, manifest)
    return files


def _manifest(result: AuditResult, files: Files, settings: ReportSettings) -> tuple[dict, str]:
    manifest = manifest_dict(result, files, settings.bundle_dir, settings.project_root)
    return manifest, json.dumps(manifest, indent=2) + "\n"


def check_formats(formats: tuple[str, ...]) -> None:
    """Fail early, with one line, for a format that cannot be written here (e.g. pdf without WeasyPrint)."""
    for name in formats:
        if WRITERS[name].preflight is not None:
            WRITERS[name].preflight()


__all__ = ["FORMATS", "WRITERS", "ReportSettings", "Writer", "build_bundle", "check_formats", "render_html",
           "render_json", "render_pdf"]
