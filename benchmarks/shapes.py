"""Real-size model shapes with seeded random weights, built offline (torchvision is not used: it cannot be
installed next to the CPU torch here): ResNet-18 as torchvision lays it out, and GPT-2 small from its config."""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """ResNet's two-convolution residual block (He et al. 2016), with torchvision's names."""

    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.relu = nn.ReLU()
        self.downsample = nn.Sequential() if stride == 1 and inputs == outputs else nn.Sequential(
            nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.downsample(x))


def resnet18(classes: int = 10, seed: int = 0) -> nn.Module:
    """ResNet-18's shape (random weights): a 7x7 stem, four stages of two BasicBlocks, 11.2 M parameters."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                               nn.MaxPool2d(3, 2, 1)]
    width = 64
    for stage, outputs in enumerate((64, 128, 256, 512)):
        layers += [BasicBlock(width, outputs, 1 if stage == 0 else 2), BasicBlock(outputs, outputs, 1)]
        width = outputs
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, classes)).eval()


def gpt2(quick: bool = False, seed: int = 0) -> nn.Module:
    """GPT-2 small's shape (``transformers.GPT2Config()``: 12 layers x 12 heads, 768 wide, 3,072 MLP neurons per
    layer, 124 M parameters), random weights, eager attention; ``quick``: 2 layers of 64 for proving a script."""
    import transformers

    from mechaudit.loading.huggingface import LogitsOnly

    torch.manual_seed(seed)
    config = transformers.GPT2Config() if not quick else transformers.GPT2Config(
        vocab_size=1000, n_embd=64, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0)
    config._attn_implementation = "eager"
    return LogitsOnly(transformers.GPT2LMHeadModel(config).eval())
