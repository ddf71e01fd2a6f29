"""Edges from attention heads to the components that read them through an additive residual stream.

Head ``u`` of an attention block writes its term of the output projection, ``c_u = W_O[:, u] z_u``, into the
residual stream. A downstream component reads the stream: a heads layer at its attention module's input, a
Linear layer at its own input. When that input is exactly the upstream block's input plus its attention output
(``x + attn(x)``, attention-only blocks without a normalisation in between; checked on every batch), the stream
is additive, and edge attribution patching (Syed et al. 2023) scores ``u -> v`` as ``(c_u_ref - c_u) . g_v``:

* ``v`` a head: ``g_v`` is the gradient of the behaviour with respect to the downstream input *through head v
  alone* (one vector-Jacobian product per downstream head, on the graph kept from the clean backward pass);
* ``v`` a Linear unit: its share ``W_v . (c_u_ref - c_u)`` times the gradient at ``v``'s output.

Streams with a LayerNorm between blocks (BERT, GPT-2) are not additive; such pairs stay unconnected.
"""

from __future__ import annotations

import torch
from torch import nn

from ..model_view import Layer, ModelView, from_units_view, units_view


class StreamRecorder:
    """Keeps, for every heads layer, its attention module's input and output (graph attached on the clean run)."""

    def __init__(self, view: ModelView, layers: list[Layer]) -> None:
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = [view.module(layer).register_forward_hook(self._keep(layer.name), with_kwargs=True)
                        for layer in layers if layer.kind == "heads"]

    def _keep(self, name: str):
        def hook(_module: nn.Module, args: tuple, kwargs: dict, output) -> None:
            stream = args[0] if args else next(iter(kwargs.values()), None)
            if isinstance(stream, torch.Tensor):
                self.inputs[name] = stream
            self.outputs[name] = output[0] if isinstance(output, tuple) else output
        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def projection_weight(site: nn.Module) -> torch.Tensor:
    """The output projection's weight as (model dim, heads * head dim) (Linear, or Hugging Face's Conv1D)."""
    weight = site.weight.detach()
    return weight if isinstance(site, nn.Linear) else weight.t()


def head_terms(site: nn.Module, heads_out: torch.Tensor, layer: Layer) -> torch.Tensor:
    """Each head's term of the output projection (no bias): (samples, heads, positions, model dim)."""
    weight = projection_weight(site)
    n, heads = heads_out.shape[0], layer.size
    z = heads_out.reshape(n, -1, heads, heads_out.shape[-1] // heads)
    return torch.einsum("nthe,dhe->nhtd", z, weight.reshape(weight.shape[0], heads, -1))


def is_additive(read: torch.Tensor, stream_in: torch.Tensor, attention_out: torch.Tensor) -> bool:
    """Whether ``read`` (what the downstream component reads) is the upstream stream plus the attention output."""
    if read.shape != stream_in.shape or stream_in.shape != attention_out.shape:
        return False
    expected = stream_in.detach() + attention_out.detach()
    return bool(torch.allclose(read.detach(), expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max() + 1)))


def edges_from_heads(view: ModelView, upstream: Layer, layer: Layer, linear_input: torch.Tensor,
                     outputs: dict[str, torch.Tensor], ref_outputs: dict[str, torch.Tensor], streams: StreamRecorder,
                     grad: torch.Tensor) -> torch.Tensor | None:
    """Scores (upstream heads, ``layer`` units) for the pair, or None when the stream between them is not additive
    (or ``layer`` is a convolution). ``linear_input`` is what a Linear ``layer`` reads; ``grad`` the gradient at
    ``layer``'s activation."""
    stream_in, attention_out = streams.inputs.get(upstream.name), streams.outputs.get(upstream.name)
    read = streams.inputs.get(layer.name) if layer.kind == "heads" else linear_input
    if layer.kind not in ("heads", "linear") or read is None or stream_in is None or not isinstance(
            attention_out, torch.Tensor):
        return None
    if not is_additive(read, stream_in, attention_out):
        return None
    clean = outputs[upstream.name].detach()
    delta = head_terms(view.site(upstream), ref_outputs[upstream.name].detach() - clean, upstream)
    if layer.kind == "heads":
        return heads_to_heads(delta, read, outputs[layer.name], grad, layer)
    return heads_to_linear(delta, view.module(layer), grad)


def heads_to_heads(delta_terms: torch.Tensor, reads: torch.Tensor, heads_out: torch.Tensor,
                   grad: torch.Tensor, layer: Layer) -> torch.Tensor:
    """Scores (upstream heads, downstream heads), summed over samples of |per-sample effect|.

    ``delta_terms`` (n, U, T, D): reference minus clean upstream head terms; ``reads`` the downstream attention
    module's input (graph attached); ``heads_out``/``grad`` the downstream heads' activation and its gradient."""
    columns = []
    for head in range(layer.size):
        only = torch.zeros_like(units_view(grad, layer))
        only[:, head] = units_view(grad, layer)[:, head]
        (through_v,) = torch.autograd.grad(heads_out, reads, grad_outputs=from_units_view(only, grad, layer),
                                           retain_graph=True)
        columns.append(torch.einsum("nutd,ntd->nu", delta_terms, through_v.detach()).abs().sum(0))
    return torch.stack(columns, dim=1)


def heads_to_linear(delta_terms: torch.Tensor, module: nn.Linear, grad: torch.Tensor) -> torch.Tensor:
    """Scores (upstream heads, Linear units): ``W_v . delta c_u`` times the gradient at ``v``, per position."""
    shares = torch.einsum("nutd,vd->nutv", delta_terms, module.weight.detach())
    return torch.einsum("nutv,ntv->nuv", shares, grad.reshape(shares.shape[0], -1, shares.shape[-1])).abs().sum(0)
