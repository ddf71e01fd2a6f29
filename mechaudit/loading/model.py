"""Load a model from a factory plus weights, a TorchScript file, an ONNX file, or (opted in) a pickled module.

Weights are read with safetensors or ``torch.load(weights_only=True)``: neither runs code from the file.
A fully pickled module can run arbitrary code when loaded, so it needs ``--trust-pickle``.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
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
from ..interrupts import Interrupted
from ..spec import ModelSpec
from .auditable import eager
from .files import DEFAULT_MAX_BYTES, check_input_file
from .forward_kwargs import bind_forward_kwargs
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
        _refuse_unpickling_arguments(spec.factory, spec.factory_args, trust_pickle)
        module = eager(_from_factory(spec.factory, spec.factory_args, search_path))
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
    module = bind_forward_kwargs(eager(module), spec.forward_kwargs)  # not torch.compile's wrapper, on every path
    return LoadedModel(module.eval(), spec.name, source, hashes)


#: Factory arguments that make a loader unpickle (run code from a file): they need ``--trust-pickle`` like a pickled
#: model does, since the spec names the loader but not what the file it reads contains.
_UNPICKLING_ARGUMENTS = {"weights_only": False, "allow_pickle": True, "trust_remote_code": True}


def _refuse_unpickling_arguments(target: str, kwargs: dict, trust_pickle: bool) -> None:
    if trust_pickle:
        return
    for key, value in _nested_items(kwargs):
        if key == "pickle_module" or (key in _UNPICKLING_ARGUMENTS and value is _UNPICKLING_ARGUMENTS[key]):
            raise InputError(f"model factory {target}", f"factory_args {key} = {str(value).lower()} lets the factory "
                                                        "unpickle (run code from a file); pass --trust-pickle only "
                                                        "if you trust the file")


def _nested_items(table: dict):
    for key, value in table.items():
        yield key, value
        if isinstance(value, dict):
            yield from _nested_items(value)


#: Spec folders added to ``sys.path`` (at its end) by this process.
_SPEC_FOLDERS: set[str] = set()


def _import_factory_module(module_name: str, search_path: Path | None):
    """Import the factory's module. The spec's folder is searched after the installed packages (appended to
    ``sys.path``), so a ``captum.py`` beside a spec never replaces the real package. A factory module that lives
    beside the spec is loaded from there by file path (never a same-named module of another spec's folder), and
    one that has the name of an installed module is an error, not a silent swap."""
    if search_path is not None:
        folder = search_path.resolve()
        if str(folder) not in sys.path:
            sys.path.append(str(folder))
        _SPEC_FOLDERS.add(str(folder))
        top = module_name.split(".")[0]
        local = _local_module(folder, top)
        if local is not None:
            installed = _installed_origin(top, folder)
            if installed is not None:
                raise InputError(f"model factory {module_name}", f"'{local.name}' beside the spec has the name of "
                                                                 f"the installed module {installed}; rename it")
            _load_from_file(top, local, folder)
    return importlib.import_module(module_name)


def _local_module(folder: Path, name: str) -> Path | None:
    for candidate in (folder / f"{name}.py", folder / name):
        if candidate.is_file() or (candidate / "__init__.py").is_file():
            return candidate
    return None


def _installed_origin(name: str, folder: Path) -> str | None:
    """Where ``name`` would be imported from, spec folders aside (None: nowhere)."""
    if name in sys.builtin_module_names:
        return "(built in)"
    others = [entry for entry in sys.path if entry not in _SPEC_FOLDERS and Path(entry or ".").resolve() != folder]
    found = importlib.machinery.PathFinder.find_spec(name, others)
    if found is None:
        return None
    return found.origin or next(iter(found.submodule_search_locations or []), name)


def _load_from_file(name: str, path: Path, folder: Path) -> None:
    """Make ``sys.modules[name]`` the module at ``path`` (a file or a package folder)."""
    current = sys.modules.get(name)
    current_file = getattr(current, "__file__", None)
    if current_file and Path(current_file).resolve().is_relative_to(folder):
        return
    location = path if path.is_file() else path / "__init__.py"
    spec = importlib.util.spec_from_file_location(name, location, submodule_search_locations=None if path.is_file()
                                                  else [str(path)])
    module = importlib.util.module_from_spec(spec)
    for key in [key for key in sys.modules if key == name or key.startswith(f"{name}.")]:
        del sys.modules[key]
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


def _from_factory(target: str, kwargs: dict, search_path: Path | None) -> nn.Module:
    module_name, _, attr = target.partition(":")
    try:
        factory = getattr(_import_factory_module(module_name, search_path), attr)
    except InputError:
        raise
    except ImportError as exc:
        raise InputError(f"model factory {target}", f"cannot import module '{module_name}' ({exc})") from None
    except AttributeError:
        raise InputError(f"model factory {target}", f"module '{module_name}' has no attribute '{attr}'") from None
    except Interrupted:
        raise
    except (Exception, KeyboardInterrupt, SystemExit) as exc:  # the user's module raised while importing
        raise InputError(f"model factory {target}", f"importing it raised {_raised(exc)}") from None
    try:
        module = factory(**kwargs)
    except Interrupted:
        raise
    except (Exception, KeyboardInterrupt, SystemExit) as exc:
        raise InputError(f"model factory {target}", f"raised {_raised(exc)}") from None
    if not isinstance(module, nn.Module):
        raise InputError(f"model factory {target}", f"returned {type(module).__name__}, not a torch.nn.Module")
    return module


def _raised(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"SystemExit (it called sys.exit({exc.code!r}))"
    return f"{type(exc).__name__}: {exc}"


_COMPILED_PREFIX = "_orig_mod."


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
    # A state_dict saved from a torch.compile wrapper prefixes every key with "_orig_mod."; the model is loaded
    # eager (unwrapped), so the prefix is dropped when every key has it.
    if state and all(key.startswith(_COMPILED_PREFIX) for key in state):
        state = {key[len(_COMPILED_PREFIX):]: value for key, value in state.items()}
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
