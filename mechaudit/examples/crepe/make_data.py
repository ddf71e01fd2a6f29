"""Write the CREPE example's audit data (``audit_data.npz``): synthetic tones with known pitch.

    python -m mechaudit.examples.crepe.make_data

Frames of 1024 samples at 16 kHz, prepared as torchcrepe prepares audio (mean-centred, unit standard deviation):
a tone of 100-1000 Hz (log-uniform) with a random phase, half of them with two overtones (``harmonic``), plus
light noise. ``labels``: the pitch bin nearest to the tone's frequency. ``window_start``: the first quarter of the
frame, (1, 1024), a region a pitch tracker should not depend on more than the rest. ``high``: the tone is above
316 Hz (the geometric middle of the range). Pairs: 64 tones and the same tones a minor third higher. Stored as
float16 to keep the file small (the values lie within +-4, so 3 significant digits are kept).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .model import SAMPLE_RATE, WINDOW, frequency_to_bin

HERE = Path(__file__).resolve().parent


def tones(frequency: torch.Tensor, harmonic: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Normalised frames of the given tones (one per frequency)."""
    t = torch.arange(WINDOW) / SAMPLE_RATE
    phase = torch.rand(len(frequency), 1, generator=generator) * 2 * math.pi
    angle = 2 * math.pi * frequency[:, None] * t + phase
    x = torch.sin(angle) + harmonic[:, None] * (0.5 * torch.sin(2 * angle) + 0.25 * torch.sin(3 * angle))
    x = x + 0.05 * torch.randn(x.shape, generator=generator)
    x = x - x.mean(1, keepdim=True)
    return x / x.std(1, keepdim=True)


def make(samples: int = 192, pairs: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    generator = torch.Generator().manual_seed(seed)
    frequency = 100 * 10 ** torch.rand(samples, generator=generator)
    harmonic = (torch.rand(samples, generator=generator) < 0.5).float()
    inputs = tones(frequency, harmonic, generator)
    base = 100 * 10 ** (torch.rand(pairs, generator=generator) * 0.8)  # up to 631 Hz, so a third higher fits
    with_overtones = (torch.rand(pairs, generator=generator) < 0.5).float()
    pair_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    clean = tones(base, with_overtones, torch.Generator().manual_seed(pair_seed))
    corrupted = tones(base * 2 ** (3 / 12), with_overtones, torch.Generator().manual_seed(pair_seed))
    window_start = torch.zeros(1, WINDOW)
    window_start[:, :WINDOW // 4] = 1.0
    return {"inputs": inputs.half().numpy(), "labels": frequency_to_bin(frequency).numpy(),
            "harmonic": harmonic.long().numpy(), "high": (frequency > 316.0).long().numpy(),
            "window_start": window_start.numpy(), "clean": clean.half().numpy(),
            "corrupted": corrupted.half().numpy()}


if __name__ == "__main__":
    np.savez_compressed(HERE / "audit_data.npz", **make())
    print(f"wrote {HERE / 'audit_data.npz'}")
