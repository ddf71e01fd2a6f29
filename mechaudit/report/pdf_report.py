"""The reviewer report as PDF: the HTML report's templates (``medium="pdf"``) typeset by WeasyPrint.

WeasyPrint is an optional extra (``pip install 'mechaudit[pdf]'``); :func:`require_weasyprint` turns its absence
into one clear line before any audit runs. Nothing is fetched while typesetting: every URL but ``data:`` (read from
the URL itself) is refused.

The document information and XMP metadata carry the title, author ("mechaudit"), subject and keywords (from the
HTML ``<title>`` and ``<meta>`` tags); ``findings.json`` and ``manifest.json`` travel inside the PDF as embedded
files. ``variant`` is WeasyPrint's ``pdf_variant``: ``pdf/a-3b`` (archival, embedded files allowed) or
``pdf/ua-1`` (tagged, accessible); tags are written for every variant.
"""

from __future__ import annotations

from types import ModuleType

from ..errors import InputError
from ..findings import AuditResult
from .html_report import render_report


def require_weasyprint() -> ModuleType:
    """Import WeasyPrint, or raise :class:`InputError` saying how to install it."""
    try:
        import weasyprint
    except (ImportError, OSError) as exc:  # OSError: the package is there but its native libraries are not
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError("--format pdf", f"needs WeasyPrint, which cannot be imported here ({detail}); "
                                         "install it with: pip install 'mechaudit[pdf]'") from None
    return weasyprint


def _refuse(url: str, *args, **kwargs):
    """Fetch nothing: only ``data:`` URLs (the rasters inside the inline SVG figures) are read, from the URL itself
    (WeasyPrint before 66, whose fetchers are functions)."""
    if url.startswith("data:"):
        from weasyprint.urls import default_url_fetcher

        return default_url_fetcher(url, *args, **kwargs)
    raise ValueError(f"the report fetches nothing (refused {url[:80]!r})")


def _fetcher(weasyprint: ModuleType):
    """The URL fetcher of the PDF: ``data:`` URLs only (a fetcher object where WeasyPrint has the class)."""
    fetcher_class = getattr(weasyprint.urls, "URLFetcher", None)
    return _refuse if fetcher_class is None else fetcher_class(allowed_protocols=("data",))


PDF_VARIANTS = ("pdf/a-3b", "pdf/ua-1")
_DESCRIPTIONS = {"findings.json": "The audit's machine-readable findings (mechaudit findings.json)",
                 "manifest.json": "SHA-256 of the bundle's other files and of the audit inputs"}


def render_pdf(result: AuditResult, variant: str | None = None,
               attachments: dict[str, str | bytes] | None = None) -> bytes:
    """The report as PDF, with ``attachments`` (name -> content) embedded as files."""
    weasyprint = require_weasyprint()
    if variant is not None and variant not in PDF_VARIANTS:
        raise InputError("--pdf-variant", f"'{variant}' is not one of {', '.join(PDF_VARIANTS)}")
    html = weasyprint.HTML(string=render_report(result, "pdf"), url_fetcher=_fetcher(weasyprint), media_type="print")
    files = [weasyprint.Attachment(string=content if isinstance(content, str) else content.decode("utf-8"),
                                   name=name, description=_DESCRIPTIONS.get(name, name), relationship="Data")
             for name, content in (attachments or {}).items()]
    return html.write_pdf(pdf_variant=variant, pdf_tags=True, attachments=files or None)
