"""The cost model's estimate against the measured time of each rule, on the embedded examples.

    python benchmarks/cost_model.py [--examples digits,induction,minilm] [--extend-select D] [--device cpu]
    python benchmarks/cost_model.py --spec path/to/audit.toml --cpu-clock [--select L202,R304]
    python benchmarks/cost_model.py --gpt2-blocks 2,4 --prompts 8 --cpu-clock --keep runs/
    python benchmarks/cost_model.py --gpt2-blocks 2,4 --prompts 8 --replan runs/

Each example is audited in its own process (``mechaudit audit --example NAME --out DIR -q``); its findings.json
holds the plan (``metadata.plan``: each rule's estimated forward and backward passes, memory and seconds on
this machine) and each rule's measured seconds (``rules[].seconds``). Printed per rule: estimate, measured, and
measured / estimate. A ratio near 1 means the estimate is right; the plan refuses or reduces a rule only when
its estimate exceeds ``--rule-timeout``, so an estimate that is high by a factor f makes the plan act f times
too early, and one that is low by f leaves the wall-clock time-out to stop the rule.

``--cpu-clock`` times with the audit process's CPU seconds instead of the wall clock (``time.perf_counter`` is
``time.process_time`` there; set ``OMP_NUM_THREADS=1`` so that CPU seconds are compute seconds): the calibration
and every rule are then timed alike however loaded the machine is, and the rule time-out is off. A calibration
holds for the thread count it was timed with (``threads`` in the plan): compare estimates and times of one
process, never a plan made with one ``OMP_NUM_THREADS`` against a run with another. ``--spec`` audits a spec
instead of the examples (e.g. a reduced GPT-2-small shape from ``benchmarks/gpt2_small.py``).
``--gpt2-blocks 2,4`` audits GPT-2-small-shaped models (768 wide, 12 heads, 3,072 MLP neurons per block, random
weights) of 2 and of 4 blocks, every head and MLP neuron, on ``--prompts`` prompts of 32 tokens from
``gpt2_small.prompts``, labelled with their own last token (``gpt2_small.py --labels random``): how the estimate
follows the measured time as the model gets deeper. ``--keep DIR`` saves each audit's findings.json there;
``--replan DIR`` runs nothing but the plan, with the calibration saved in DIR's findings.json, and prints the
current cost model's estimates against the times measured then (to check a change of the model without re-running
the audits).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path


def audit(example: str, out: Path, extra: list[str], cpu_clock: bool = False) -> dict:
    """Audit ``example`` (an example's name, or a spec's path) in its own process; its findings.json."""
    target = ["--example", example] if not example.endswith(".toml") else [example]
    argv = ["audit", *target, "--out", str(out), "-q", "--format", "json", *extra]
    if cpu_clock:
        argv += ["--rule-timeout", "0"]
    code = ("import sys, time\n" + ("time.perf_counter = time.process_time\n" if cpu_clock else "")
            + f"from mechaudit.cli import main\nsys.exit(main({argv!r}))\n")
    subprocess.run([sys.executable, "-c", code], check=False,
                   cwd=Path(example).parent if example.endswith(".toml") else None)
    return json.loads((out / "findings.json").read_text(encoding="utf-8"))


GPT2 = """import transformers, torch
from mechaudit.loading.huggingface import LogitsOnly


def build():
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer={blocks})
    config._attn_implementation = "eager"
    return LogitsOnly(transformers.GPT2LMHeadModel(config).eval())
"""


def gpt2_spec(folder: Path, blocks: int, prompts: int) -> Path:
    """A spec auditing every head and MLP neuron of a GPT-2-small-shaped model of ``blocks`` blocks."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gpt2_small import SPEC, layer_list
    from gpt2_small import prompts as make_prompts
    from realsize import write_spec

    units = [f"transformer.h.{i}.{part}" for i in range(blocks) for part in ("attn", "mlp.c_fc")]
    spec = SPEC.format(quick="false", layers=layer_list(units)).replace("factory_args = { quick = false }\n", "")
    return write_spec(folder, spec, make_prompts(prompts, 32, 50257), GPT2.format(blocks=blocks))


REPLAN = """import json, sys
from dataclasses import replace
import mechaudit.engine as engine
from mechaudit.cost import Calibration
from mechaudit.spec import load_spec
saved = {saved!r}
measured = engine.measure


def measure(context, isolate):
    sizes, _ = measured(context, isolate)
    return sizes, Calibration(saved["forward_ms_per_sample"] / 1e3, saved["backward_ms_per_sample"] / 1e3,
                              saved["seconds_per_gflop"] / 1e9, saved["ms_per_call"] / 1e3, saved["backward_measured"],
                              saved.get("threads", 0))


engine.measure = measure
from pathlib import Path
spec = load_spec(Path({spec!r}))
spec = replace(spec, options=replace(spec.options, rule_timeout=0))
print("PLAN", json.dumps(engine.plan_audit(spec).to_dict()))
"""


def replan(example: str, saved: dict) -> dict:
    """``saved`` (a findings.json) with its plan replaced by the current cost model's, under its calibration, for
    ``example`` (an example's name, or a spec's path)."""
    from mechaudit.errors import InputError
    from mechaudit.examples import example_spec

    try:
        spec = Path(example).resolve() if example.endswith(".toml") else example_spec(example)
    except InputError as exc:
        raise RuntimeError(str(exc)) from None
    code = REPLAN.format(saved=saved["metadata"]["plan"]["calibration"], spec=str(spec))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=spec.parent, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("PLAN ")]
    if not lines:
        raise RuntimeError(f"the plan failed: {(done.stdout + done.stderr).strip()[-2000:]}")
    return {**saved, "metadata": {**saved["metadata"], "plan": json.loads(lines[-1][5:])}}


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
    parser.add_argument("--spec", default="", help="audit this spec (audit.toml) instead of the examples")
    parser.add_argument("--gpt2-blocks", default="", help="audit GPT-2-small shapes of these depths, e.g. 2,4")
    parser.add_argument("--prompts", type=int, default=8, help="with --gpt2-blocks: prompts of 32 tokens [8]")
    parser.add_argument("--replan", default="", help="plan only, against the findings.json saved by --keep here")
    parser.add_argument("--keep", default="", help="copy each audit's findings.json into this folder")
    parser.add_argument("--select", default="", help="only these rules (comma-separated)")
    parser.add_argument("--cpu-clock", action="store_true", help="time with the audit process's CPU seconds")
    args = parser.parse_args()
    extra = ["--device", args.device] + (["--extend-select", args.extend_select] if args.extend_select else [])
    extra += ["--select", args.select] if args.select else []
    ratios = []
    specs = tempfile.TemporaryDirectory()
    targets = ([str(gpt2_spec(Path(specs.name) / f"gpt2-{b}", int(b), args.prompts))
                for b in args.gpt2_blocks.split(",")] if args.gpt2_blocks
               else [str(Path(args.spec).resolve())] if args.spec else args.examples.split(","))
    for example in targets:
        with tempfile.TemporaryDirectory() as folder:
            name = Path(example).parent.name if example.endswith(".toml") else example
            try:
                if args.replan:
                    kept = Path(args.replan) / f"{name}.json"
                    if not kept.is_file():
                        print(f"{example}: no {kept} to replan (run with --keep {args.replan} first)")
                        continue
                    result = replan(example, json.loads(kept.read_text(encoding="utf-8")))
                else:
                    result = audit(example, Path(folder) / "out", extra, args.cpu_clock)
                if args.keep and not args.replan:
                    Path(args.keep).mkdir(parents=True, exist_ok=True)
                    (Path(args.keep) / f"{name}.json").write_text(json.dumps(result), encoding="utf-8")
            except FileNotFoundError:
                print(f"{example}: no findings.json (is its extra installed?)")
                continue
            except RuntimeError as exc:  # the plan's own process failed: its last lines say why
                print(f"{example}: {exc}")
                continue
        calibration = result["metadata"]["plan"]["calibration"]
        print(f"\n{example}: a sample-forward {calibration['forward_ms_per_sample']:.3g} ms, "
              f"a sample-backward {calibration['backward_ms_per_sample']:.3g} ms, "
              f"a call {calibration['ms_per_call']:.3g} ms, {calibration.get('threads', '?')} threads")
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
