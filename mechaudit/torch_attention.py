"""Heads of torch's ``nn.MultiheadAttention``, whose output projection has no input to hook.

``nn.MultiheadAttention`` applies ``out_proj``'s weights inside ``F.multi_head_attention_forward`` without calling
the ``out_proj`` module. So one forward hook per attention module (a :class:`HeadsHook`) reruns the module with
an identity output projection to get the concatenated heads (samples, tokens, heads * head dim), passes them
through every function registered for the layer in order (each may replace them, as a pre-hook on a real
projection would), and returns their projection: the module's own output, with the heads on its graph.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

HeadsFn = Callable[[torch.Tensor, tuple], "torch.Tensor | None"]

_HOOKS: weakref.WeakKeyDictionary[nn.MultiheadAttention, HeadsHook] = weakref.WeakKeyDictionary()


class HeadsHook:
    """The one forward hook on an ``nn.MultiheadAttention`` that exposes its heads to mechaudit's functions."""

    def __init__(self, module: nn.MultiheadAttention) -> None:
        self.module = module
        self.functions: list[HeadsFn] = []
        self.running = False
        self.handle = module.register_forward_hook(self, with_kwargs=True)

    def __call__(self, module: nn.MultiheadAttention, args: tuple, kwargs: dict, output: tuple):
        if self.running or not self.functions:
            return None
        weight, bias = module.out_proj.weight, module.out_proj.bias
        identity = {"out_proj.weight": torch.eye(weight.shape[1], dtype=weight.dtype, device=weight.device)}
        if bias is not None:
            identity["out_proj.bias"] = torch.zeros_like(bias)
        self.running = True
        try:
            heads = torch.func.functional_call(module, identity, args, kwargs)[0]
        finally:
            self.running = False
        if not module.batch_first and heads.dim() == 3:  # (tokens, samples, width) -> samples first
            heads = heads.transpose(0, 1)
        for function in list(self.functions):
            replaced = function(heads, (heads,))  # as for a real projection: its input is the heads
            heads = heads if replaced is None else replaced
        if not module.batch_first and heads.dim() == 3:
            heads = heads.transpose(0, 1)
        return (F.linear(heads, weight, bias), *output[1:])


class _Handle:
    def __init__(self, hook: HeadsHook, function: HeadsFn) -> None:
        self.hook, self.function = hook, function

    def remove(self) -> None:
        if self.function in self.hook.functions:
            self.hook.functions.remove(self.function)
        if not self.hook.functions and _HOOKS.get(self.hook.module) is self.hook:
            self.hook.handle.remove()
            del _HOOKS[self.hook.module]


def register_heads_hook(module: nn.MultiheadAttention, function: HeadsFn) -> _Handle:
    """Call ``function(heads, (heads,))`` on every forward of ``module`` (the heads samples first, as the output
    projection's input would be); a tensor it returns replaces the heads."""
    hook = _HOOKS.get(module)
    if hook is None:
        hook = _HOOKS[module] = HeadsHook(module)
    hook.functions.append(function)
    return _Handle(hook, function)


def recomputing(module: nn.Module) -> bool:
    """True while ``module``'s :class:`HeadsHook` reruns it to get its heads: a hook on the module's own forward
    (a pre-hook that reads its input) then sees a second call of the same forward pass."""
    hook = _HOOKS.get(module) if isinstance(module, nn.MultiheadAttention) else None
    return hook is not None and hook.running


@contextmanager
def without_fast_path() -> Iterator[None]:
    """Within the context, torch computes attention through the ``nn.MultiheadAttention`` modules (hookable)."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)
