"""Tuning curves: a unit's response as one factor of a synthetic input is swept, the rest held fixed.

* :func:`patch_position_curve`: a bright square moved over a blank image (a receptive-field map);
* :func:`oriented_grating_curve`: sinusoidal gratings at evenly spaced orientations, averaged over phase (the
  orientation tuning of Hubel & Wiesel 1962, as used on artificial units by Olah et al. 2020, "An Overview of Early
  Vision in InceptionV1", Distill);
* :func:`region_sweep_curve`: a declared input region (a mask) set to evenly spaced values on real samples, the
  rest of each sample kept (how a unit responds as a marked concept, e.g. a watermark, fades in);
* :func:`feature_sweep_curve`: one tabular feature swept over its 1st-99th percentile range at the dataset's
  median sample (a partial-dependence slice, Friedman 2001).

``response(batch) -> (batch,)`` gives the unit's response (e.g. a channel's spatial mean; the probes are CPU float
tensors, ``response`` moves them to the model's device). Every curve is a JSON-ready dict with values rounded to 4
decimals.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Response = Callable[[torch.Tensor], torch.Tensor]
BATCH = 256  # probes per call of ``response``


def patch_position_curve(response: Response, shape: tuple[int, int, int], patch: int = 2, value: float = 1.0,
                         stride: int = 1) -> dict:
    """Responses to a ``patch`` x ``patch`` square of ``value`` on zeros of ``shape`` ``(C, H, W)``, swept over
    every position (row-major, top-left corners ``[r, c]``; ``grid`` is the number of rows and columns)."""
    if len(shape) != 3:
        raise ValueError(f"patch positions need an image shape (C, H, W), got {tuple(shape)}")
    _, height, width = shape
    patch, stride = max(1, min(int(patch), height, width)), max(1, int(stride))
    rows, columns = range(0, height - patch + 1, stride), range(0, width - patch + 1, stride)
    positions = [[r, c] for r in rows for c in columns]

    def probes(chunk: list[list[int]]) -> torch.Tensor:
        batch = torch.zeros((len(chunk), *shape))
        for i, (r, c) in enumerate(chunk):
            batch[i, :, r:r + patch, c:c + patch] = value
        return batch

    responses = _respond(response, positions, probes)
    return {"factor": "patch position", "patch": patch, "grid": [len(rows), len(columns)],
            "positions": positions, "response": responses}


def oriented_grating_curve(response: Response, shape: tuple[int, int, int], angles: int = 12,
                           frequency: float = 0.2, phases: int = 8) -> dict:
    """Mean response over ``phases`` to gratings ``0.5 + 0.5 sin(2 pi f (x cos a + y sin a) + phase)`` in [0, 1].

    ``angles`` orientations evenly spaced in [0, 180) degrees; ``a`` is the direction along which intensity
    varies (0: vertical stripes, varying along columns; 90: horizontal stripes, varying down the rows).
    ``frequency`` is in cycles per pixel.
    """
    if len(shape) != 3:
        raise ValueError(f"gratings need an image shape (C, H, W), got {tuple(shape)}")
    degrees = [round(180.0 * i / max(1, angles), 4) for i in range(max(1, angles))]
    channels, height, width = shape
    y, x = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                          indexing="ij")
    phase_values = [2 * math.pi * k / max(1, phases) for k in range(max(1, phases))]

    def probes(chunk: list[tuple[float, float]]) -> torch.Tensor:
        images = []
        for angle, phase in chunk:
            theta = math.radians(angle)
            wave = 2 * math.pi * frequency * (x * math.cos(theta) + y * math.sin(theta))
            images.append((0.5 + 0.5 * torch.sin(wave + phase)).expand(channels, height, width))
        return torch.stack(images)

    count = len(phase_values)
    per_probe = _respond(response, [(a, p) for a in degrees for p in phase_values], probes, digits=None)
    responses = [round(sum(per_probe[i:i + count]) / count, 4) + 0.0 for i in range(0, len(per_probe), count)]
    return {"factor": "grating orientation", "frequency": round(float(frequency), 4), "angles": degrees,
            "response": responses}


def region_sweep_curve(response: Response, inputs: torch.Tensor, mask: torch.Tensor, low: float, high: float,
                       points: int = 11, region: str = "region") -> dict:
    """Mean response over ``inputs`` as the pixels where ``mask`` (broadcast to the inputs) is set are replaced by
    each of ``points`` values from ``low`` to ``high``."""
    inside = mask.bool().expand_as(inputs)
    values = torch.linspace(float(low), float(high), max(2, int(points))).tolist()
    out = []
    with torch.no_grad():
        for value in values:
            responses = torch.cat([response(torch.where(inside[i:i + BATCH], value, inputs[i:i + BATCH]).float())
                                   for i in range(0, len(inputs), BATCH)])
            out.append(round(float(responses.float().mean()), 4) + 0.0)
    return {"factor": f"value of {region}", "values": [round(v, 4) + 0.0 for v in values], "response": out}


def feature_sweep_curve(response: Response, inputs: torch.Tensor, feature: int, points: int = 21,
                        feature_name: str | None = None) -> dict:
    """Responses as column ``feature`` of the dataset's median sample sweeps its 1st-99th percentile range."""
    if inputs.dim() != 2:
        raise ValueError(f"feature sweeps need a table (samples, features), got shape {tuple(inputs.shape)}")
    if not 0 <= feature < inputs.shape[1]:
        raise ValueError(f"feature {feature} out of range for {inputs.shape[1]} features")
    table = inputs.detach().float().cpu()
    median = table.quantile(0.5, dim=0)
    low, high = table[:, feature].quantile(torch.tensor([0.01, 0.99])).tolist()
    values = torch.linspace(low, high, max(2, int(points)))

    def probes(chunk: list[float]) -> torch.Tensor:
        batch = median.repeat(len(chunk), 1)
        batch[:, feature] = torch.tensor(chunk)
        return batch

    responses = _respond(response, values.tolist(), probes)
    return {"factor": feature_name or f"x{feature}", "feature": int(feature),
            "values": [round(v, 4) + 0.0 for v in values.tolist()], "response": responses}


def _respond(response: Response, settings: list, probes: Callable[[list], torch.Tensor],
             digits: int | None = 4) -> list[float]:
    """``response`` on the probes built from ``settings``, in chunks of ``BATCH``, as floats (rounded)."""
    out: list[float] = []
    with torch.no_grad():
        for start in range(0, len(settings), BATCH):
            values = response(probes(settings[start:start + BATCH])).detach().float().flatten().cpu()
            out += [float(v) if digits is None else round(float(v), digits) + 0.0 for v in torch.nan_to_num(values)]
    return out
