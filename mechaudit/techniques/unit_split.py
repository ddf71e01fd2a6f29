"""Does a layer's input split by the units of the audited layer before it? The one check that circuit node and
edge scores (:mod:`.circuits`), exact edge patching (:mod:`.edge_patching`) and node ablation (:mod:`.node_ablation`)
share, so that they all patch the same tensor.

A layer's input splits by ``previous``'s units when it is a unit-wise function of ``previous``'s output alone:
only elementwise functions (the nonlinearity), pooling and flattening sit between the two (MLPs, CNNs). Then
unit ``u``'s part of it (after ``u``'s nonlinearity, pooling, flattening) is what the next layer reads from ``u``.
Shapes alone cannot tell: a residual sum ``relu(c1(h)) + h`` has the shape of ``c1``'s output. So
:func:`unit_splits` checks it numerically on one batch.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import linear_maps
from ..model_view import Layer, ModelView, installed, units_view


def split_input(previous: Layer, layer: Layer, module: nn.Module, x_in: torch.Tensor) -> torch.Tensor | None:
    """``layer``'s input ``x_in`` split by ``previous``'s units (samples, units, ...), when the shapes allow it
    (heads, residual streams, grouped or non-zero-padded convolutions never split); else None. A view of ``x_in``
    where possible. Whether the split is right (nothing else reaches the input) is :func:`unit_splits`'s job."""
    if "heads" in (previous.kind, layer.kind) or "stream" in (previous.kind, layer.kind):
        return None
    if layer.kind == "conv" and (module.groups != 1 or module.padding_mode != "zeros"):
        return None
    if linear_maps.is_linear(module):
        features = x_in.shape[-1]
        if x_in.dim() != 2 or features % previous.size:
            return None
        return x_in.reshape(x_in.shape[0], previous.size, features // previous.size)
    if x_in.shape[1] != previous.size:
        return None
    return x_in


def unit_splits(view: ModelView, batch: torch.Tensor, reference: torch.Tensor | None = None) -> dict[str, bool]:
    """For each pair of consecutive audited layers, keyed by the later one's name: whether its input is, on
    ``batch``, a unit-wise function of the earlier layer's output alone (so that :func:`split_input` is right).
    Two numeric checks beyond the shapes:

    * nothing else reaches it: run on other inputs (the batch rolled by one sample; for a single sample, the
      ``reference`` inputs) with the earlier
      layer's output held at its value on ``batch``, the later layer's input must not change (a residual sum
      ``relu(c1(h)) + h`` does);
    * no mixing of units: a vector-Jacobian product from the later layer's input back to the earlier layer's
      output, with the cotangent's units scaled by random factors, must come back scaled unit by unit.

    One forward pass with the earlier layers' outputs made leaves of the graph, and one forward pass per candidate
    pair (layers of heads and residual streams never split, so they cost nothing). A pair is False when there is
    nothing to compare with (a single sample and no other reference)."""
    layers = view.layers
    pairs = [(previous, layer) for previous, layer in zip(layers, layers[1:])]
    result = {layer.name: False for _, layer in pairs}
    other = batch.roll(1, 0) if batch.shape[0] > 1 else reference
    candidates = [(p, la) for p, la in pairs if "heads" not in (p.kind, la.kind) and "stream" not in (p.kind, la.kind)]
    if not candidates or other is None or other.shape != batch.shape or torch.equal(other, batch):
        return result
    leaves: dict[str, torch.Tensor] = {}
    reads: dict[str, torch.Tensor] = {}

    def leaf(name: str):
        def hook(output: torch.Tensor, _args: tuple) -> torch.Tensor:
            leaves[name] = output.detach().requires_grad_(True)
            return leaves[name].clone()  # an in-place operation after the layer must not modify the leaf
        return hook

    def read(name: str):
        def hook(_output: torch.Tensor, args: tuple) -> None:
            reads[name] = args[0]
        return hook
    sources = {p.name: p for p, _ in candidates}
    with installed([*(view.hook(p, leaf(p.name)) for p in sources.values()),
                    *(view.hook(la, read(la.name)) for _, la in candidates)]), torch.enable_grad():
        view.model(batch)
    for previous, layer in candidates:
        if previous.name in leaves and layer.name in reads:
            result[layer.name] = _splits(view, previous, layer, leaves[previous.name], reads[layer.name], other)
    return result


def _splits(view: ModelView, previous: Layer, layer: Layer, out: torch.Tensor, read: torch.Tensor,
            other: torch.Tensor) -> bool:
    module = view.module(layer)
    if not isinstance(read, torch.Tensor) or split_input(previous, layer, module, read.detach()) is None:
        return False
    clean_out, clean_in = out.detach(), read.detach()
    seen: dict[str, torch.Tensor] = {}

    def record(_output: torch.Tensor, args: tuple) -> None:
        seen["input"] = args[0].detach()
    with installed([view.hook(previous, lambda _output, _args: clean_out), view.hook(layer, record)]), \
            torch.no_grad():
        view.model(other)
    if "input" not in seen or not torch.allclose(seen["input"], clean_in, rtol=1e-4,
                                                 atol=1e-5 * float(clean_in.abs().max().clamp_min(1e-12))):
        return False
    if not read.requires_grad:
        return False
    generator = torch.Generator().manual_seed(0)
    cotangent = torch.randn(read.shape, generator=generator).to(read)
    factors = (torch.rand(previous.size, generator=generator) + 0.5).to(read)
    split = split_input(previous, layer, module, cotangent)
    scaled = (split * factors.view(1, -1, *([1] * (split.dim() - 2)))).reshape(read.shape)
    (plain,) = torch.autograd.grad(read, out, cotangent, retain_graph=True, allow_unused=True)
    (back,) = torch.autograd.grad(read, out, scaled, retain_graph=True, allow_unused=True)
    if plain is None or back is None:
        return False
    expected = units_view(plain, previous) * factors.view(1, -1, 1)
    return torch.allclose(units_view(back, previous), expected, rtol=1e-4,
                          atol=1e-5 * float(expected.abs().max().clamp_min(1e-12)))
