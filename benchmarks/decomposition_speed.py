"""All decomposition rules (D101-D106) on the digits examples: seconds per rule and in total.

D102-D106 are opt-in; the selector `D1` names them.

    python benchmarks/decomposition_speed.py

Target: all D-rules on `digits` in under 15 s on a 2-core CPU (the audit's model loading and shared artifacts
included, reports excluded). Also prints the memory the sparse autoencoder training streams: it holds one chunk
of activation vectors, not the dataset, when the layer's activations exceed the rule's `memory_vectors`.
"""

from __future__ import annotations

import time
from dataclasses import replace

from mechaudit.engine import run_audit
from mechaudit.examples import EXAMPLES
from mechaudit.spec import load_spec


def main() -> None:
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
        print(f"{name}: D103 with streamed activations (memory_vectors = 1): {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
