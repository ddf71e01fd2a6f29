"""The default audit of a GPT-2-small-shaped model: all 144 heads and all 36,864 MLP neurons, then the opt-in
decomposition rules on two residual streams.

    pip install "mechaudit[hf]" && python benchmarks/gpt2_small.py [--blocks 12] [--prompts 64] [--quick]

The model is ``transformers.GPT2Config()`` with seeded random weights (nothing is downloaded). 64 prompts of 32
random tokens; the corrupted prompt replaces the last token. ``--labels`` chooses the label of the last position:
``predicted`` (the default), the model's own next-token prediction on the clean prompt, so the audited behaviour is
the model's own, as when a user audits their model on what it does (a model of random weights has no task, and its
accuracy on any other labels is chance: what L201/L202 judge would be absent); ``random``, the last prompt token
itself (the labels before stop 31), which the random model predicts on 2 of the 64 prompts, so nearly every
accuracy drop is exactly 0 and L202's rank agreement measures those ties more than its screen. The header line says
which labels ran. Targets (issue 16, 2 CPU cores): the default audit <= 15 min wall and
<= 8 GiB peak RSS. ``--blocks N`` audits the first N blocks only (a reduced run on a loaded machine).
``--plan`` prints the default audit's plan (``mechaudit audit --plan``: each rule's estimated passes and seconds)
and runs nothing; ``--calibration-ms FORWARD,BACKWARD`` plans with those milliseconds per sample-forward and
sample-backward (and no per-call overhead) instead of timing this machine, so plans made under different loads
compare (e.g. ``88.5,133``: this shape on an otherwise idle 2-core machine, measured with ``--plan``).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from realsize import BENCHMARKS, print_run, run_audit, write_spec

MODEL = f"""import sys
sys.path.insert(0, {str(BENCHMARKS)!r})
from shapes import gpt2


def build(quick: bool = False):
    return gpt2(quick)
"""

SPEC = """[model]
name = "GPT-2-small shape, random weights"
factory = "bench_model:build"
factory_args = {{ quick = {quick} }}

[data]
file = "audit_data.npz"
inputs = "inputs"
labels = "labels"

[data.pairs]
clean = "inputs"
corrupted = "corrupted"

[task]
kind = "next-token"

[behaviour]
kind = "label_logit"
position = -1

[audit]
layers = {layers}
"""


def prompts(count: int, tokens: int, vocabulary: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random prompts labelled with their own last token; the corrupted twin has another last token."""
    rng = np.random.default_rng(seed)
    inputs = rng.integers(1, vocabulary, (count, tokens))
    corrupted = inputs.copy()
    corrupted[:, -1] = (inputs[:, -1] + rng.integers(1, vocabulary - 1, count)) % (vocabulary - 1) + 1
    return {"inputs": inputs, "labels": inputs[:, -1].copy(), "corrupted": corrupted}


def predicted_labels(data: dict[str, np.ndarray], quick: bool, batch: int = 8) -> dict[str, np.ndarray]:
    """``data`` labelled with the benchmark model's own next-token prediction at the last position of each clean
    prompt (the model is built as the audit builds it, then dropped)."""
    import torch
    from shapes import gpt2

    model = gpt2(quick)
    with torch.no_grad():
        predicted = torch.cat([model(torch.from_numpy(data["inputs"][i:i + batch]))[:, -1].argmax(-1)
                               for i in range(0, len(data["inputs"]), batch)])
    return {**data, "labels": predicted.numpy()}


PLAN = """import dataclasses, sys
import mechaudit.engine as engine
from mechaudit.cli import main
fixed = {fixed!r}
measured = engine.measure


def measure(context, isolate):
    sizes, calibration = measured(context, isolate)
    if fixed:
        calibration = dataclasses.replace(calibration, forward_seconds=fixed[0] / 1e3, backward_seconds=fixed[1] / 1e3,
                                          call_seconds=0.0)
    return sizes, calibration


engine.measure = measure
sys.exit(main(["audit", "audit.toml", "--plan"]))
"""


def print_plan(spec: Path, calibration_ms: str) -> None:
    """The default audit's plan, with this machine's calibration or the given milliseconds per sample."""
    import subprocess
    import sys

    fixed = tuple(float(part) for part in calibration_ms.split(",")) if calibration_ms else None
    done = subprocess.run([sys.executable, "-c", PLAN.format(fixed=fixed)], capture_output=True, text=True,
                          cwd=spec.parent)
    print("\n".join(line for line in (done.stdout + done.stderr).splitlines() if " skip " not in line))


LABELS = {"predicted": "the model's own next-token prediction on each clean prompt",
          "random": "each prompt's last token, predicted by the random model on few prompts"}


def layer_list(names: list[str]) -> str:
    return "[" + ", ".join(f'"{name}"' for name in names) + "]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=12, help="audit the first N blocks [12]")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="2 layers of 64: proves the script in a minute")
    parser.add_argument("--skip-streams", action="store_true", help="only the default audit")
    parser.add_argument("--only-streams", action="store_true", help="only the D10 audit of the residual streams")
    parser.add_argument("--timeout", type=float, default=3600, help="kill an audit after this many seconds")
    parser.add_argument("--plan", action="store_true", help="print the default audit's plan and run nothing")
    parser.add_argument("--calibration-ms", default="", help="with --plan: FORWARD,BACKWARD ms per sample")
    parser.add_argument("--labels", choices=("predicted", "random"), default="predicted",
                        help="the label of each prompt: the model's own prediction [predicted] or its last token")
    parser.add_argument("--select", default="", help="audit only these rules (e.g. L202), as --select")
    parser.add_argument("--out", default="", help="keep the audits' findings in this folder (default: discarded)")
    parser.add_argument("--rule-timeout", default="", help="the audit's --rule-timeout (e.g. 0 on a loaded machine)")
    parser.add_argument("--device", default="", help="the audit's --device (e.g. cuda)")
    parser.add_argument("--dtype", default="", help="the audit's --dtype (e.g. bfloat16)")
    args = parser.parse_args()
    blocks = min(args.blocks, 2) if args.quick else args.blocks
    vocabulary = 1000 if args.quick else 50257
    data = prompts(args.prompts, args.tokens, vocabulary)
    if args.labels == "predicted":
        data = predicted_labels(data, args.quick)
    units = [f"transformer.h.{i}.{part}" for i in range(blocks) for part in ("attn", "mlp.c_fc")]
    streams = [f"transformer.h.{i}" for i in sorted({blocks // 2 - 1, blocks - 1}) if i >= 0]
    heads, neurons = (4, 256) if args.quick else (12, 3072)
    print(f"# GPT-2-small shape{' (quick)' if args.quick else ''}: {blocks} blocks audited, {blocks * heads} heads, "
          f"{blocks * neurons:,} MLP neurons; {args.prompts} prompts of {args.tokens} tokens; labels: {args.labels} "
          f"({LABELS[args.labels]})")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.out).resolve() if args.out else Path(tmp)  # audit runs from the spec folder
        spec = write_spec(folder, SPEC.format(quick=str(args.quick).lower(), layers=layer_list(units)), data, MODEL)
        if args.plan:
            print_plan(spec, args.calibration_ms)
            return
        select = tuple(item for flag, value in (("--select", args.select), ("--rule-timeout", args.rule_timeout),
                                                ("--device", args.device), ("--dtype", args.dtype))
                       if value for item in (flag, value))
        if not args.only_streams:
            run = run_audit(spec, folder / "default", *select, timeout=args.timeout)
            print_run("default rulebook" + (f", {args.select} only" if args.select else "") + ": heads and MLP neurons"
                      + "".join(f", {value}" for value in (args.device, args.dtype) if value),
                      run, "<= 15 min, <= 8 GiB")
        if not args.skip_streams:
            spec.write_text(SPEC.format(quick=str(args.quick).lower(), layers=layer_list(streams)), encoding="utf-8")
            run = run_audit(spec, folder / "streams", *select, "--extend-select", "D10", timeout=args.timeout)
            print_run(f"default rulebook + D10 on the residual streams {', '.join(streams)}", run, "-")


if __name__ == "__main__":
    main()
