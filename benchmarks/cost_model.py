"""The cost model's estimate against the measured time of each rule, on the embedded examples.

    python benchmarks/cost_model.py [--examples digits,induction,minilm] [--extend-select D] [--device cpu]

Each example is audited in its own process (``mechaudit audit --example NAME --out DIR -q``); its findings.json
holds the plan (``metadata.plan``: each rule's estimated forward and backward passes, memory and seconds on
this machine) and each rule's measured seconds (``rules[].seconds``). Printed per rule: estimate, measured, and
measured / estimate. A ratio near 1 means the estimate is right; the plan refuses or reduces a rule only when
its estimate exceeds ``--rule-timeout``, so an estimate that is high by a factor f makes the plan act f times
too early, and one that is low by f leaves the wall-clock time-out to stop the rule.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path


def audit(example: str, out: Path, extra: list[str]) -> dict:
    command = [sys.executable, "-m", "mechaudit", "audit", "--example", example, "--out", str(out), "-q", *extra]
    subprocess.run(command, check=False)
    return json.loads((out / "findings.json").read_text(encoding="utf-8"))


def rows(result: dict) -> list[tuple[str, float, float]]:
    """(rule, estimated s, measured s) for every rule the plan let run."""
    measured = {rule["id"]: rule["seconds"] for rule in result["rules"]}
    return [(entry["rule"], entry["estimated_seconds"], measured.get(entry["rule"], 0.0))
            for entry in result["metadata"]["plan"]["rules"] if entry["action"] in ("run", "reduce")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", default="digits,induction,minilm")
    parser.add_argument("--extend-select", default="", help="also run these (opt-in) rules, e.g. D")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args()
    extra = ["--device", args.device] + (["--extend-select", args.extend_select] if args.extend_select else [])
    ratios = []
    for example in args.examples.split(","):
        with tempfile.TemporaryDirectory() as folder:
            try:
                result = audit(example, Path(folder) / "out", extra)
            except FileNotFoundError:
                print(f"{example}: no findings.json (is its extra installed?)")
                continue
        calibration = result["metadata"]["plan"]["calibration"]
        print(f"\n{example}: a sample-forward {calibration['forward_ms_per_sample']:.3g} ms, "
              f"a sample-backward {calibration['backward_ms_per_sample']:.3g} ms, "
              f"a call {calibration['ms_per_call']:.3g} ms")
        print(f"{'rule':<6}{'estimated s':>12}{'measured s':>12}{'measured/est.':>15}")
        for rule, estimated, seconds in rows(result):
            ratio = seconds / estimated if estimated > 0 else math.inf
            if estimated > 0 and seconds > 0:
                ratios.append(ratio)
            print(f"{rule:<6}{estimated:>12.3g}{seconds:>12.3g}{ratio:>15.3g}")
    if ratios:
        logs = sorted(math.log10(r) for r in ratios)
        print(f"\nmeasured/estimated over {len(ratios)} rules: median {10 ** logs[len(logs) // 2]:.3g}, "
              f"range {10 ** logs[0]:.3g}..{10 ** logs[-1]:.3g}")


if __name__ == "__main__":
    main()
