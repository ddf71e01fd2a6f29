"""What the next layer reads from a layer, as activation vectors: the layer's output at each position (a conv
layer's channels at each spatial cell, a token model's units at each token, attention heads' concatenated outputs
at each token), passed through the rectifying nonlinearity that follows it, if any.

A unit is measured on what the next layer reads: the pre-activation of a layer followed by a ReLU is not what the
model computes with (its negative part is cut off), and its mean over positions can hide all structure (the
spatial mean of a convolution's pre-activation is an affine function of the input's spatial mean: for a one-channel
input, rank one whatever the filters).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..activations import batches, hooked
from ..model_view import Layer, ModelView
from .nonlinearity import Following
from .sae import layer_vectors

#: Rectifiers by the words their module or function names contain (see :mod:`.nonlinearity`); Hugging Face's
#: tanh-approximated GELUs are read as the exact GELU (they differ by less than 1e-3).
_FUNCTIONS: tuple[tuple[str, Callable[[torch.Tensor], torch.Tensor]], ...] = (
    ("relu6", F.relu6), ("hardswish", F.hardswish), ("relu", F.relu), ("gelu", F.gelu), ("silu", F.silu),
    ("swish", F.silu), ("mish", F.mish))


def rectifier_function(following: Following | None) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The function of the rectifier a layer's output reaches, or None when none follows it (or it is unknown)."""
    if following is None or not following.rectified:
        return None
    name = following.what.lower()
    return next((function for word, function in _FUNCTIONS if word in name), None)


def describe_tensor(layer: Layer, following: Following | None) -> str:
    """In words, which tensor :func:`read_and_input_covariances` reads as ``layer``'s output."""
    where = "each token" if layer.kind in ("heads", "stream") else "each position"
    if rectifier_function(following) is not None:
        return f"the output after the {following.what} that follows the layer, at {where}"
    return f"the layer's output (no rectifier follows it), at {where}"


class RunningCovariance:
    """The (width, width) covariance of vectors added chunk by chunk (float64 sums): memory is one width x width
    matrix, whatever the number of vectors."""

    def __init__(self) -> None:
        self.count, self.total, self.gram = 0, None, None

    def add(self, chunk: torch.Tensor) -> None:
        x = chunk.double().cpu()
        self.total = x.sum(0) if self.total is None else self.total + x.sum(0)
        self.gram = x.T @ x if self.gram is None else self.gram + x.T @ x
        self.count += x.shape[0]

    @property
    def covariance(self) -> torch.Tensor:
        if not self.count:
            raise ValueError("no vectors were added")
        mean = self.total / self.count
        return (self.gram - self.count * torch.outer(mean, mean)) / max(self.count - 1, 1)


def input_vectors(module: nn.Module, value: torch.Tensor) -> torch.Tensor:
    """What ``module`` reads, as vectors: a 2-D convolution's input patches (channels x kernel cells, at each
    output position), else the input's last dimension (a token's or a sample's features); ``(n, width)``."""
    if isinstance(module, nn.Conv2d) and value.dim() == 4:
        patches = F.unfold(value, module.kernel_size, module.dilation, module.padding, module.stride)
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])
    if isinstance(module, nn.Conv1d) and value.dim() == 3:
        return value.transpose(1, 2).reshape(-1, value.shape[1])
    return value.reshape(-1, value.shape[-1])


def read_and_input_covariances(view: ModelView, layer: Layer, inputs: torch.Tensor, batch_size: int,
                               device: torch.device, following: Following | None = None,
                               ) -> tuple[RunningCovariance, RunningCovariance | None]:
    """One pass over ``inputs``: the covariance of the vectors the next layer reads (the
    layer's output at each position, rectified when a rectifier follows)
    and of those the layer's module reads (:func:`input_vectors` of its first tensor argument; None when the
    module takes no tensor)."""
    module = view.model.get_submodule(layer.name)
    function = rectifier_function(following)
    read, given = RunningCovariance(), RunningCovariance()

    def on_input(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        value = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor) and a.is_floating_point()),
                     None)
        if value is not None:
            given.add(input_vectors(module, value.detach()))

    def on_output(_layer: Layer, output: torch.Tensor) -> None:
        vectors = layer_vectors(output, layer)
        read.add(function(vectors) if function is not None else vectors)

    handle = module.register_forward_pre_hook(on_input, with_kwargs=True)
    try:
        with hooked(view, [layer], on_output), torch.no_grad():
            for _, batch in batches(inputs, batch_size, device):
                view.model(batch)
    finally:
        handle.remove()
    return read, (given if given.count else None)
