"""Dataset exemplars: the samples that activate a unit or dictionary feature the most.

For each component, the ``top`` samples with the highest (already pooled) activation, each with a compact,
JSON-ready payload a reviewer can read: a small grey tile for images, the most unusual features for tabular rows
(largest |z-score| against the dataset), and the context around the peak token for text. Showing the strongest
natural exemplars next to a synthetic visualisation is the practice of Zeiler & Fergus 2014 ("Visualizing and
Understanding Convolutional Networks") and Olah et al. 2017 ("Feature Visualization", Distill).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ROW_FEATURES = 6  # tabular: features listed per exemplar
CONTEXT_TOKENS = 5  # text: tokens either side of the peak


def top_exemplars(scores: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor | None, components: list[int],
                  names: list[str], top: int = 8, class_names: list[str] | None = None,
                  feature_names: list[str] | None = None, tokens: list[list[str]] | None = None,
                  positions: torch.Tensor | None = None, max_tile: int = 32) -> list[dict]:
    """The ``top`` samples of highest ``scores[:, c]`` for each ``c`` in ``components`` (named ``names``).

    ``scores`` is ``(samples, components)``. The payload depends on the input kind: ``tile`` for images
    ``(N, C, H, W)``, ``row`` for float tables ``(N, F)``, ``context`` when ``tokens`` (and the peak ``positions``)
    are given. Activations and values are rounded to 4 decimals (``None`` where not finite).
    """
    scores = _check(scores, inputs, components, names, tokens, positions)
    top = max(0, min(int(top), scores.shape[0]))
    payload = _payload_maker(inputs, feature_names, tokens, positions, max_tile)
    result = []
    for component, name in zip(components, names):
        column = torch.nan_to_num(scores[:, component], nan=float("-inf"))
        order = torch.argsort(column, descending=True, stable=True)[:top].tolist()
        exemplars = [{"sample": int(i), "activation": _round(scores[i, component]),
                      "label": _label(labels, i, class_names), **payload(i)} for i in order]
        result.append({"component": str(name), "exemplars": exemplars})
    return result


def _check(scores: torch.Tensor, inputs: torch.Tensor, components: list[int], names: list[str],
           tokens: list[list[str]] | None, positions: torch.Tensor | None) -> torch.Tensor:
    if scores.dim() != 2:
        raise ValueError(f"scores must be (samples, components), got shape {tuple(scores.shape)}")
    if len(components) != len(names):
        raise ValueError(f"{len(components)} components but {len(names)} names")
    if any(not 0 <= int(c) < scores.shape[1] for c in components):
        raise ValueError(f"component index out of range for {scores.shape[1]} components")
    if tokens is None and inputs.shape[0] != scores.shape[0]:
        raise ValueError(f"{inputs.shape[0]} inputs but {scores.shape[0]} score rows")
    if tokens is not None and (positions is None or len(tokens) != scores.shape[0]
                               or positions.shape[0] != scores.shape[0]):
        raise ValueError("text exemplars need one token list and one peak position per scored sample")
    return scores.detach().float().cpu()


def _payload_maker(inputs: torch.Tensor, feature_names: list[str] | None, tokens: list[list[str]] | None,
                   positions: torch.Tensor | None, max_tile: int):
    """A function ``sample index -> payload dict`` for the kind of input."""
    if tokens is not None and positions is not None:
        peaks = positions.detach().cpu().long().tolist()
        return lambda i: {"context": _context(tokens[i], peaks[i])}
    if inputs.dim() == 4:
        images = inputs.detach().float().cpu()
        return lambda i: {"tile": _tile(images[i], max_tile)}
    if inputs.dim() == 2 and inputs.is_floating_point():
        table = inputs.detach().double().cpu()
        mean, std = table.mean(0), table.std(0, unbiased=False)
        z = torch.where(std > 0, (table - mean) / std.clamp_min(1e-12), torch.zeros_like(table))
        columns = feature_names or [f"x{j}" for j in range(table.shape[1])]
        return lambda i: {"row": _row(table[i], z[i], columns)}
    return lambda i: {}


def _tile(image: torch.Tensor, max_tile: int) -> list[list[float]]:
    """Mean over channels, min-max scaled to [0, 1], average-pooled down to at most ``max_tile`` a side."""
    grey = torch.nan_to_num(image.mean(0))
    height, width = grey.shape
    size = (min(height, max(1, max_tile)), min(width, max(1, max_tile)))
    grey = F.adaptive_avg_pool2d(grey[None, None], size)[0, 0]
    low, high = grey.min(), grey.max()
    grey = (grey - low) / (high - low) if high > low else torch.zeros_like(grey)
    return [[_round(v) for v in row] for row in grey]


def _row(values: torch.Tensor, z: torch.Tensor, columns: list[str]) -> dict[str, float]:
    """The ``ROW_FEATURES`` features of largest |z|, most unusual first, with their raw values."""
    order = torch.argsort(z.abs(), descending=True, stable=True)[:ROW_FEATURES].tolist()
    return {str(columns[j]) if j < len(columns) else f"x{j}": _round(values[j]) for j in order}


def _context(tokens: list[str], peak: int) -> str:
    """Up to ``CONTEXT_TOKENS`` tokens either side of ``peak``, the peak token wrapped as ``[[tok]]``."""
    if not tokens:
        return ""
    peak = min(max(int(peak), 0), len(tokens) - 1)
    before = tokens[max(0, peak - CONTEXT_TOKENS):peak]
    after = tokens[peak + 1:peak + 1 + CONTEXT_TOKENS]
    return " ".join([*map(str, before), f"[[{tokens[peak]}]]", *map(str, after)])


def _label(labels: torch.Tensor | None, index: int, class_names: list[str] | None) -> str | None:
    if labels is None:
        return None
    value = labels[index]
    value = int(value.item()) if isinstance(value, torch.Tensor) else int(value)
    if class_names is not None and 0 <= value < len(class_names):
        return str(class_names[value])
    return str(value)


def _round(value: torch.Tensor | float) -> float | None:
    """``value`` to 4 decimals; ``None`` (JSON ``null``) when it is not finite."""
    value = float(value)
    return round(value, 4) + 0.0 if value == value and abs(value) != float("inf") else None
