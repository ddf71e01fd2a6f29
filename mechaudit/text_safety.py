"""Escaping for each medium a user-controlled string is printed to: a terminal (and the GitHub Actions log that
reads workflow commands from it) and Markdown. HTML is escaped by the templates (Jinja autoescape), XML by the JUnit
writer (which also replaces the characters XML forbids), JSON by the serializer.

Strings that come from outside the user's own code (waiver files, baselines, manifests, data file keys, model
cards) can hold newlines, terminal escape sequences or markup; escaped, they print as visible text.
"""

from __future__ import annotations

import re

#: Control characters (C0, DEL, C1), line and paragraph separators, and the bidirectional overrides that can make
#: a line read differently from what it holds (CVE-2021-42574).
_UNSAFE_TERMINAL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|#!])")


def _visible(match: re.Match) -> str:
    code = ord(match.group(0))
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def terminal_safe(text: str) -> str:
    """``text`` on one line with every control character shown as an escape (``\\x1b``, ``\\x0a``): it cannot
    move the cursor, recolour the terminal, or start a new line that GitHub Actions reads as a workflow command."""
    return _UNSAFE_TERMINAL.sub(_visible, str(text))


def markdown_safe(text: str) -> str:
    """``text`` as literal inline Markdown: one line, markup characters backslash-escaped (``<`` too, so no HTML
    comment such as a model card's section marker can be formed)."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", terminal_safe(" ".join(str(text).split())))



def markdown_code(text: str, table: bool = False) -> str:
    """``text`` for inside a Markdown code span: one line, no backtick to close the span early; in a table cell,
    pipes escaped too."""
    text = " ".join(str(text).split()).replace("`", "'")
    return text.replace("|", "\\|") if table else text
