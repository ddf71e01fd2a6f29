"""The default audit of a ResNet-18-shaped CNN on 2,048 images of 3x64x64 with a declared input region.

    python benchmarks/resnet18_shaped.py [--images 2048] [--size 64] [--quick]

torchvision cannot be installed next to the CPU torch here, so the model is built by hand in torchvision's layout
(:func:`shapes.resnet18`, 11.2 M parameters, seeded random weights). Images are smooth random fields; the declared
region is an 8x8 corner patch. Labels are the model's own predictions, so accuracy starts at 100% and every
accuracy drop the rules measure is the model's. Target (issue 16, 2 CPU cores): <= 10 min wall.
L203 fails here, and rightly: randomising weights that were random already leaves integrated gradients ranked by
the input and the architecture (0.60, as between two independently seeded ResNet-18s; ``mechaudit explain L203``).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from realsize import BENCHMARKS, print_run, run_audit, write_spec
from shapes import resnet18

MODEL = f"""import sys
sys.path.insert(0, {str(BENCHMARKS)!r})
from shapes import resnet18


def build():
    return resnet18()
"""

SPEC = """[model]
name = "ResNet-18 shape, random weights"
factory = "bench_model:build"

[data]
file = "audit_data.npz"
inputs = "inputs"
labels = "labels"

[data.masks]
corner = "corner"

[task]
kind = "classification"
"""


def images(count: int, size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Smooth random images (noise blurred by upsampling), the model's labels, and a corner mask."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(count, 3, size // 8, size // 8, generator=generator)
    inputs = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    inputs = inputs + 0.1 * torch.randn(inputs.shape, generator=generator)
    with torch.no_grad():
        labels = torch.cat([resnet18()(chunk).argmax(1) for chunk in inputs.split(256)])
    mask = np.zeros((1, size, size), dtype=bool)
    mask[:, :8, :8] = True
    return {"inputs": inputs.numpy().astype(np.float32), "labels": labels.numpy(), "corner": mask}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="128 images of 32x32: proves the script")
    parser.add_argument("--timeout", type=float, default=3600, help="kill the audit after this many seconds")
    parser.add_argument("--device", default="", help="the audit's --device (e.g. cuda)")
    parser.add_argument("--dtype", default="", help="the audit's --dtype (e.g. bfloat16)")
    args = parser.parse_args()
    count, size = (128, 32) if args.quick else (args.images, args.size)
    print(f"# ResNet-18 shape: {count:,} images of 3x{size}x{size}, 11.2 M parameters, 4,800 conv channels")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        spec = write_spec(folder, SPEC, images(count, size), MODEL)
        options = [item for flag, value in (("--device", args.device), ("--dtype", args.dtype))
                   if value for item in (flag, value)]
        run = run_audit(spec, folder / "out", *options, timeout=args.timeout)
        print_run("default rulebook" + "".join(f", {value}" for value in (args.device, args.dtype) if value), run,
                  "<= 10 min")


if __name__ == "__main__":
    main()
