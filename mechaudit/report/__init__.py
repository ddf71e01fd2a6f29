"""Report writers: one small serializer per output format; none of them touches a check."""

from __future__ import annotations

from collections.abc import Callable

from ..findings import AuditResult
from .html_report import render_html
from .json_report import render_json

WRITERS: dict[str, tuple[str, Callable[[AuditResult], str]]] = {
    "json": ("findings.json", render_json),
    "html": ("report.html", render_html),
}
FORMATS = tuple(WRITERS)

__all__ = ["FORMATS", "WRITERS", "render_html", "render_json"]
