"""All decomposition rules (D101-D106) on the digits examples: seconds per rule and in total; and, with
``--minilm``, D103, D104 and D106 on two 384-wide layers of the real pretrained MiniLM (`minilm` example).

D102-D106 are opt-in; the selector `D1` names them.

    python benchmarks/decomposition_speed.py [--minilm]

Target: all D-rules on `digits` in under 15 s on a 2-core CPU (the audit's model loading and shared artifacts
included, reports excluded). Also prints the time D103 takes with a disk-backed training buffer (the layer's
activations above the rule's `memory_vectors`: the dictionaries train on a temporary numpy memmap and evaluation
streams from the model). On MiniLM (64 sentences of 24 tokens: 1,536 token vectors per layer) D103 spends at most
its `budget_gmac` (3,000 billion multiply-adds by default, shared by the layers): the script prints its seconds
(wall and CPU), the multiply-adds spent per layer, the peak resident memory and every finding.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import replace

from mechaudit.engine import run_audit
from mechaudit.examples import EXAMPLES, REAL_MODELS
from mechaudit.spec import load_spec

MINILM_LAYERS = ("encoder.layer.1.attention", "encoder.layer.2")


def digits() -> None:
    for name in ("digits", "digits-control"):
        spec = load_spec(EXAMPLES[name].spec)
        spec = replace(spec, options=replace(spec.options, select=("D1",)))
        started = time.perf_counter()
        result = run_audit(spec)
        total = time.perf_counter() - started
        per_rule = ", ".join(f"{run.rule_id} {run.seconds:.2f} s" for run in result.rules)
        print(f"{name}: D-rules {total:.1f} s in total (target < 15 s); {per_rule}")
        streamed = replace(spec, options=replace(spec.options, select=("D103",),
                                                 rules=(("D103", "benchmark", {"memory_vectors": 1}),)))
        started = time.perf_counter()
        run_audit(streamed)
        print(f"{name}: D103 with a disk-backed buffer (memory_vectors = 1): {time.perf_counter() - started:.1f} s")


def minilm() -> None:
    spec = load_spec(REAL_MODELS["minilm"].spec)
    spec = replace(spec, options=replace(spec.options, select=("D103", "D104", "D106"), layers=MINILM_LAYERS,
                                         rule_timeout=0))
    wall, cpu = time.perf_counter(), time.process_time()
    result = run_audit(spec)
    print(f"minilm {', '.join(MINILM_LAYERS)}: {time.perf_counter() - wall:.0f} s wall, "
          f"{time.process_time() - cpu:.0f} s CPU; peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB; "
          + ", ".join(f"{run.rule_id} {run.seconds:.1f} s" for run in result.rules))
    for finding in result.findings:
        budget = finding.evidence.get("budget") if finding.metric == "fvu" else None
        print(f"  {finding.rule_id} {finding.status} {finding.metric} {finding.value:.3f}"
              + (f" [{finding.interval['low']:.3f}, {finding.interval['high']:.3f}]" if finding.interval else "")
              + f": {finding.message[:110]}" + (f"\n    budget {budget}" if budget else ""))


if __name__ == "__main__":
    minilm() if "--minilm" in sys.argv else digits()
