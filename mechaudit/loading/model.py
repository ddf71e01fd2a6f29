"""Load a model from a factory plus weights, a TorchScript file, an ONNX file, or (opted in) a pickled module.

Weights are read with safetensors or ``torch.load(weights_only=True)``: neither runs code from the file.
A fully pickled module can run arbitrary code when loaded, so it needs ``--trust-pickle``.
"""

from __future__ import annotations

import importlib
import pickle
import sys
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError
from ..spec import ModelSpec
from .files import DEFAULT_MAX_BYTES, check_input_file
from .hashing import sha256_file


@dataclass
class LoadedModel:
    module: nn.Module
    name: str
    source: str
    hashes: dict[str, str]
    #: For a converted model (ONNX): compares the module with the original on the audit inputs, returns the record
    #: kept in the result's metadata (``model.conversion``) and raises InputError on a mismatch.
    conversion_check: Callable[[torch.Tensor], dict] | None = None


def load_model(spec: ModelSpec, trust_pickle: bool = False, search_path: Path | None = None,
               max_bytes: int = DEFAULT_MAX_BYTES) -> LoadedModel:
    """Build the model a spec names, in eval mode, on the CPU."""

    def _check_file(path: Path, what: str) -> Path:
        return check_input_file(path, what, max_bytes)

    if spec.factory:
        module = _from_factory(spec.factory, spec.factory_args, search_path)
        hashes = {}
        if spec.weights is not None:
            _check_file(spec.weights, "model weights")
            _load_weights(module, spec.weights)
            hashes[str(spec.weights)] = sha256_file(spec.weights)
        source = spec.factory
    elif spec.onnx:
        from .onnx import load_onnx

        return load_onnx(spec.onnx, spec.name, spec.forward_kwargs, max_bytes)
    elif spec.torchscript:
        module = _from_torchscript(_check_file(spec.torchscript, "TorchScript model"))
        hashes, source = {str(spec.torchscript): sha256_file(spec.torchscript)}, str(spec.torchscript)
    else:
        assert spec.pickle is not None
        module = _from_pickle(_check_file(spec.pickle, "pickled model"), trust_pickle)
        hashes, source = {str(spec.pickle): sha256_file(spec.pickle)}, str(spec.pickle)
    return LoadedModel(module.eval(), spec.name, source, hashes)


def _from_factory(target: str, kwargs: dict, search_path: Path | None) -> nn.Module:
    module_name, _, attr = target.partition(":")
    if search_path is not None and str(search_path) not in sys.path:
        sys.path.insert(0, str(search_path))
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except ImportError as exc:
        raise InputError(f"model factory {target}", f"cannot import module '{module_name}' ({exc})") from None
    except AttributeError:
        raise InputError(f"model factory {target}", f"module '{module_name}' has no attribute '{attr}'") from None
    except Exception as exc:  # the user's module raised while importing
        raise InputError(f"model factory {target}", f"importing it raised {type(exc).__name__}: {exc}") from None
    try:
        module = factory(**kwargs)
    except Exception as exc:
        raise InputError(f"model factory {target}", f"raised {type(exc).__name__}: {exc}") from None
    if not isinstance(module, nn.Module):
        raise InputError(f"model factory {target}", f"returned {type(module).__name__}, not a torch.nn.Module")
    return module


def _load_weights(module: nn.Module, path: Path) -> None:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise InputError(str(path), f"not a readable safetensors file ({exc})") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise InputError(str(path),
                             "holds more than tensors; refusing to unpickle it (save a state_dict)") from None
        except Exception as exc:
            raise InputError(str(path), f"not a readable state_dict ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(str(path), "is not a state_dict of tensors")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "mismatch"
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:3])
        raise InputError(str(path), f"weights do not fit the model: {first} {detail}".strip()) from None


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/")[1:2] == ["code"] for name in archive.namelist())


def _from_torchscript(path: Path) -> nn.Module:
    if not _is_torchscript(path):
        raise InputError(str(path), "is not a TorchScript archive (save it with torch.jit.save)")
    try:
        with warnings.catch_warnings():  # TorchScript is deprecated upstream but still what users ship
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise InputError(str(path), f"TorchScript model could not be loaded ({type(exc).__name__})") from None


def _from_pickle(path: Path, trust_pickle: bool) -> nn.Module:
    if not trust_pickle:
        raise InputError(
            str(path),
            "is a pickled model; unpickling can run arbitrary code, so pass --trust-pickle only if you trust it "
            "(better: a factory plus safetensors weights)",
        )
    try:
        module = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise InputError(str(path), f"pickled model could not be loaded ({type(exc).__name__}: {exc})") from None
    if not isinstance(module, nn.Module):
        raise InputError(str(path), f"holds a {type(module).__name__}, not a torch.nn.Module")
    return module
