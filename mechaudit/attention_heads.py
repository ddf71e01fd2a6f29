"""Where a model's attention heads are: head counts and output projections found without the spec's help.

An attention block is a module with an output projection (a Linear or GPT-2 ``Conv1D`` whose input is the
concatenated heads) and a head count. The count is read, in this order, from the module's own attributes (or
those of its ``self`` child, as BERT): a head count (``num_heads``, ``n_head``, ...), or a head size
(``head_dim``, ``attention_head_size``, ...) that divides the projection's input width; then from the model's
``config`` (Hugging Face: ``num_attention_heads``, ``n_head``, ...) for modules that look like attention. A module
looks like attention when it holds a fused query-key-value projection (``qkv``, ``c_attn``, ``Wqkv``,
``query_key_value``, ``in_proj``) or separate query, key and value projections. One that looks like attention but
whose heads cannot be split (no count anywhere, or no output projection) is returned as a *note*, so that the
report says why it is audited as plain linear units rather than head by head.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from . import linear_maps

HEAD_COUNTS = ("num_heads", "n_heads", "n_head", "num_attention_heads")  # not `heads`: too often something else
HEAD_SIZES = ("head_dim", "head_size", "attention_head_size", "d_head", "dim_head")
OUT_PROJECTIONS = ("output.dense", "c_proj", "o_proj", "out_proj", "out", "proj", "dense", "o", "wo", "to_out",
                   "to_out.0", "out_lin")
FUSED_QKV = ("qkv", "c_attn", "Wqkv", "wqkv", "query_key_value", "qkv_proj", "to_qkv", "in_proj")
SEPARATE_QKV = (("q_proj", "k_proj", "v_proj"), ("query", "key", "value"), ("q", "k", "v"), ("wq", "wk", "wv"),
                ("to_q", "to_k", "to_v"), ("self.query", "self.key", "self.value"),
                ("q_lin", "k_lin", "v_lin"))
_OWNERS = ("", "self")  # BERT keeps the count on attention.self


@dataclass
class AttentionBlocks:
    """Attention blocks by module path: (output projection path, heads), and notes on blocks not split."""

    blocks: dict[str, tuple[str, int]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


def find_attention_blocks(model: nn.Module) -> AttentionBlocks:
    """Every recognised attention block of ``model`` (``nn.MultiheadAttention`` is hooked at the module itself,
    see :mod:`mechaudit.torch_attention`) and a note for each module that looks like attention but is not split."""
    modules = dict(model.named_modules())
    config_heads = _positive_int(getattr(model, "config", None), HEAD_COUNTS)
    found = AttentionBlocks()
    for name, module in modules.items():
        if isinstance(module, nn.MultiheadAttention):
            found.blocks[name] = (name, module.num_heads)
            continue
        if any(name.startswith(f"{block}.") for block in found.blocks):
            continue  # inside a block already found (BERT's attention.self under attention)
        looks = looks_like_attention(name, modules)
        projection = _output_projection(name, modules)
        if projection is None:
            if looks and not any(f"{name}.".startswith(f"{other}.") for other in found.notes):
                found.notes[name] = ("computes attention but its heads are not split: no output projection "
                                     f"({', '.join(OUT_PROJECTIONS[:5])}, ...) was found; its Linear layers are "
                                     "audited as plain units")
            continue
        width = linear_maps.in_features(modules[projection])
        heads = head_count(module, width)
        if heads is None and looks and config_heads and width % config_heads == 0:
            heads = config_heads
        if heads and width % heads == 0:
            found.blocks[name] = (projection, heads)
        elif looks:
            found.notes[name] = ("computes attention but its heads are not split: its head count was found neither "
                                 f"on the module ({', '.join(HEAD_COUNTS[:4])}, head_dim, ...) nor in the model's "
                                 "config; its Linear layers are audited as plain units")
    for name in list(found.notes):
        if any(name == block or name.startswith(f"{block}.") or block.startswith(f"{name}.")
               for block in found.blocks):
            del found.notes[name]  # a parent or a child was split after all
    return found


def head_count(module: nn.Module, width: int) -> int | None:
    """The number of heads recorded on ``module`` (or its ``self`` child): a head count,
    else ``width`` (the output projection's input) divided by a recorded head size."""
    owners = [_child(module, owner) for owner in _OWNERS]
    for owner in owners:
        count = _positive_int(owner, HEAD_COUNTS)
        if count:
            return count
    for owner in owners:
        size = _positive_int(owner, HEAD_SIZES)
        if size and width % size == 0:
            return width // size
    return None


def looks_like_attention(name: str, modules: dict[str, nn.Module]) -> bool:
    """Whether the module at ``name`` holds a fused or separate query/key/value projections."""
    def linear(relative: str) -> bool:
        return linear_maps.is_linear(modules.get(f"{name}.{relative}" if name else relative))

    return any(linear(child) for child in FUSED_QKV) or any(all(linear(c) for c in trio) for trio in SEPARATE_QKV)


def _output_projection(name: str, modules: dict[str, nn.Module]) -> str | None:
    for relative in OUT_PROJECTIONS:
        path = f"{name}.{relative}" if name else relative
        if linear_maps.is_linear(modules.get(path)):
            return path
    return None


def _child(module: nn.Module, relative: str) -> object:
    return module if not relative else getattr(module, relative, None)


def _positive_int(owner: object, attributes: tuple[str, ...]) -> int | None:
    for attribute in attributes:
        value = getattr(owner, attribute, None) if owner is not None else None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None
