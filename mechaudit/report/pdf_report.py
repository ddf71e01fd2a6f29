"""The reviewer report as PDF: the HTML report's templates (``medium="pdf"``) typeset by WeasyPrint.

WeasyPrint is an optional extra (``pip install 'mechaudit[pdf]'``); :func:`require_weasyprint` turns its absence
into one clear line before any audit runs. Nothing is fetched while typesetting: every URL is refused.
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
    raise ValueError(f"the report fetches nothing (refused {url[:80]!r})")


def render_pdf(result: AuditResult) -> bytes:
    weasyprint = require_weasyprint()
    html = weasyprint.HTML(string=render_report(result, "pdf"), url_fetcher=_refuse, media_type="print")
    return html.write_pdf()
