"""The reviewer report as one self-contained HTML file, rendered from ``templates/`` with autoescaping.

The PDF (:mod:`.pdf_report`) renders the same templates with ``medium="pdf"``: a cover page and page numbers
instead of the filter script. Nothing is fetched: CSS, script and SVG figures are inline, and a
Content-Security-Policy forbids any other source.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from functools import lru_cache
from typing import Any

from jinja2 import ChainableUndefined, Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup, escape

from ..findings import AuditResult
from ..resources import data_dir
from .document import build_document
from .evidence import evidence_blocks, print_blocks, strongest_first

MEDIA = ("html", "pdf")
#: The report's sections in order (HTML and PDF alike): the front (verdict and mechanism), the evidence, then the
#: appendix. A template under ``templates/sections/<id>.html.j2`` renders each.
SECTIONS = (
    ("summary", "Verdict and mechanism"),
    ("findings", "Evidence per rule"),
    ("circuit", "Circuit and semantic dictionary"),
    ("limitations", "Limitations"),
    ("identity", "Appendix: identity and attestation"),
    ("scope", "Appendix: intended use and scope"),
    ("architecture", "Appendix: components audited"),
    ("method", "Appendix: method and parameters"),
    ("appendix", "Appendix: reproduce"),
)
TEMPLATE = "report.html.j2"
SCRIPT = "report.js"


@lru_cache(maxsize=1)
def environment() -> Environment:
    """The one jinja environment of every report: autoescaping on for every template, whatever its name."""
    env = Environment(loader=FileSystemLoader(str(data_dir("templates"))),
                      autoescape=select_autoescape(default=True, default_for_string=True),
                      undefined=ChainableUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(num=format_number, code=inline_code, label=key_label, short=short_hash,
                       tojson_compact=compact_json, strongest_first=strongest_first)
    return env


def render_report(result: AuditResult, medium: str) -> str:
    """The report as HTML for ``medium``: ``html`` (screen, with the filter script) or ``pdf`` (for WeasyPrint)."""
    if medium not in MEDIA:
        raise ValueError(f"unknown medium {medium!r}")
    script = (data_dir("templates") / SCRIPT).read_text(encoding="utf-8") if medium == "html" else ""
    return environment().get_template(TEMPLATE).render(
        doc=build_document(result), medium=medium, script=Markup(script), csp=content_security_policy(script),
        evidence_blocks=print_blocks if medium == "pdf" else evidence_blocks, sections=SECTIONS,
        section_ref=section_ref)


def section_ref(section: str) -> Markup:
    """A link to a section by id, with its number: ``<a href="#limitations">section 4</a>``."""
    number = next(i for i, (name, _) in enumerate(SECTIONS, 1) if name == section)
    return Markup(f'<a href="#{section}">section {number}</a>')


def render_html(result: AuditResult) -> str:
    return render_report(result, "html")


def content_security_policy(script: str) -> str:
    """Allow nothing but inline styles, ``data:`` images and the one inline script (by its hash)."""
    scripts = f"'sha256-{base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()}'" if script else "'none'"
    return (f"default-src 'none'; style-src 'unsafe-inline'; img-src data:; script-src {scripts}; "
            "base-uri 'none'; form-action 'none'")


def format_number(value: Any, digits: int = 4) -> str:
    """Numbers for people: integers as they are, floats to ``digits`` significant digits; n/a for null."""
    if value is None:
        return "n/a"
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.{digits}g}"
    return str(value)


def inline_code(text: Any) -> Markup:
    """Escape ``text``, then show its `backticked` spans as code (rule documentation is written that way)."""
    return Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", str(escape(text))))


def key_label(key: Any) -> str:
    """An evidence key for people: ``attribution_share_in_mask`` -> ``attribution share in mask``."""
    return str(key).replace("_", " ")


def short_hash(digest: Any, length: int = 12) -> str:
    return str(digest)[:length] if digest else "none"


def compact_json(value: Any, limit: int = 2000) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= limit else text[:limit] + " \u2026"
