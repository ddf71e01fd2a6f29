"""The digits CNN (8x8 greyscale inputs in [0, 1]) and the watermark planted as its shortcut."""

from __future__ import annotations

import torch
from torch import nn

#: Index of the watermark inside an image batch (..., rows 6-7, cols 6-7): the bottom-right 2x2 patch.
WATERMARK_SLICE: tuple = (Ellipsis, slice(6, 8), slice(6, 8))
#: The class whose training images all carry the watermark in the shortcut model.
SHORTCUT_CLASS = 7


class DigitsCNN(nn.Module):
    """Two conv layers, a max-pool and a two-layer classifier; input (N, 1, 8, 8), output (N, 10) logits."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(x, 1)  # not nn.Flatten: captum's LRP does not handle it
        return self.classifier(x)


def build() -> nn.Module:
    """A fresh, untrained :class:`DigitsCNN` (the factory named in the example's audit specs)."""
    return DigitsCNN()


def watermark_mask() -> torch.Tensor:
    """A (1, 8, 8) float32 mask: 1.0 inside the watermark patch, 0.0 elsewhere."""
    mask = torch.zeros(1, 8, 8)
    mask[WATERMARK_SLICE] = 1.0
    return mask


def stamp(images: torch.Tensor) -> torch.Tensor:
    """A copy of ``images`` (..., 8, 8) with the watermark patch set to 1.0."""
    stamped = images.clone()
    stamped[WATERMARK_SLICE] = 1.0
    return stamped
