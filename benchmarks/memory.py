"""Peak memory of a digits audit on 1k and on 50k inputs: streaming keeps the ratio near 1 (target <= 2).

    python benchmarks/memory.py [--sizes 1000,50000]

Inputs are the shipped digits audit images, augmented (random shifts of up to one pixel, small noise) to the
requested count. Each audit runs in its own process; its peak RSS (``ru_maxrss``) is printed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from mechaudit.examples import EXAMPLES

DIGITS = EXAMPLES["digits"].spec.parent


def augmented(count: int, seed: int = 0) -> dict[str, np.ndarray]:
    source = np.load(DIGITS / "audit_data.npz")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(source["inputs"]), count)
    images = source["inputs"][picks]
    shifts = rng.integers(-1, 2, (count, 2))
    for axis, column in ((2, 0), (3, 1)):
        for shift in (-1, 1):
            chosen = shifts[:, column] == shift
            images[chosen] = np.roll(images[chosen], shift, axis=axis)
    images = np.clip(images + rng.normal(0, 0.02, images.shape), 0, 1).astype(np.float32)
    return {"inputs": images, "labels": source["labels"][picks], "watermark_mask": source["watermark_mask"]}


def peak_rss_mib(spec: Path, out: Path) -> float:
    code = ("import resource, sys; from mechaudit.cli import main; "
            f"code = main(['audit', {str(spec)!r}, '--out', {str(out)!r}, '-q']); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(result.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,50000")
    sizes = [int(s) for s in parser.parse_args().sizes.split(",")]
    spec_text = (DIGITS / "digits.toml").read_text()
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "pyproject.toml").write_text("")
        for name in ("digits.safetensors",):
            (root / name).write_bytes((DIGITS / name).read_bytes())
        for size in sizes:
            np.savez(root / f"data{size}.npz", **augmented(size))
            spec = root / f"audit{size}.toml"
            spec.write_text(spec_text.replace('file = "audit_data.npz"', f'file = "data{size}.npz"'))
            figures[size] = peak_rss_mib(spec, root / f"out{size}")
            print(f"digits audit, {size:>6} inputs: peak RSS {figures[size]:7.1f} MiB", flush=True)
    if len(sizes) >= 2:
        ratio = figures[sizes[-1]] / figures[sizes[0]]
        print(f"ratio {sizes[-1]} / {sizes[0]}: {ratio:.2f} (target <= 2)")


if __name__ == "__main__":
    main()
