"""Time the report step (HTML + PDF, figures included) on the embedded ``digits`` example; target < 10 s.

    python benchmarks/report_speed.py [--repeat 3]

The audit runs once; then each repetition builds the bundle of ``--format html,pdf`` from a fresh copy of the
result (so the figures are drawn again, as in a real run) and times it. Prints the HTML size (target < 5 MB),
the PDF size and page count, and the best and median times.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from mechaudit.engine import run_audit
from mechaudit.examples import example_spec
from mechaudit.report import build_bundle
from mechaudit.spec import load_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--example", default="digits")
    args = parser.parse_args()
    result = run_audit(load_spec(example_spec(args.example)))
    times, files = [], {}
    for _ in range(args.repeat):
        fresh = copy.deepcopy(result)  # a new result: nothing cached from the previous repetition
        start = time.perf_counter()
        files = build_bundle(fresh, ("html", "pdf"))
        times.append(time.perf_counter() - start)
    html, pdf = files["report.html"].encode("utf-8"), files["report.pdf"]
    figures = [name for name in files if name.startswith("figures/")]
    print(f"example {args.example}: {len(result.findings)} findings, {len(figures)} figures")
    print(f"HTML {len(html) / 1e6:.3f} MB (target < 5 MB); PDF {len(pdf) / 1e6:.3f} MB, {_pages(pdf)} pages")
    print(f"report step (HTML + PDF): best {min(times):.2f} s, median {statistics.median(times):.2f} s "
          f"over {len(times)} runs (target < 10 s)")


def _pages(pdf: bytes) -> str:
    with tempfile.NamedTemporaryFile(suffix=".pdf") as handle:
        Path(handle.name).write_bytes(pdf)
        try:
            info = subprocess.run(["pdfinfo", handle.name], capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return "? (pdfinfo not installed)"
    return next((line.split()[-1] for line in info.splitlines() if line.startswith("Pages:")), "?")


if __name__ == "__main__":
    main()
