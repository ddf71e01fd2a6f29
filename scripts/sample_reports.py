"""Regenerate ``sample_reports/``: the reports (JSON, HTML, PDF, figures, manifest) of every embedded example.

    python scripts/sample_reports.py

Each example runs through the real command line, ``mechaudit audit --example NAME --out sample_reports/NAME
--format json,html,pdf``, from the repository root, so the reports record exactly that command.
``tests/test_sample_reports.py`` checks that their findings still match a fresh audit.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mechaudit.examples import EXAMPLES

REPO = Path(__file__).resolve().parent.parent
FORMATS = "json,html,pdf"


def regenerate(name: str) -> int:
    """Audit one example into ``sample_reports/NAME``; returns the audit's exit code (0 or 1 is a report)."""
    command = [sys.executable, "-m", "mechaudit", "audit", "--example", name, "--out", f"sample_reports/{name}",
               "--format", FORMATS, "-q"]
    return subprocess.run(command, cwd=REPO, check=False).returncode


def main() -> int:
    for name in EXAMPLES:
        code = regenerate(name)
        print(f"sample_reports/{name}: {'gate fails' if code == 1 else 'gate passes' if code == 0 else 'FAILED'}")
        if code not in (0, 1):
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
