"""Read named arrays from .npz, .safetensors, .pt and .csv files, never unpickling code."""

from __future__ import annotations

import csv
import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from .files import DEFAULT_MAX_BYTES, check_input_file

SUFFIXES = (".npz", ".safetensors", ".pt", ".pth", ".csv")


def read_arrays(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, np.ndarray]:
    """All arrays in a data file, by key (by column name for CSV)."""
    check_input_file(path, "data", max_bytes)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise InputError(str(path), f"unsupported data format '{suffix}' (use {', '.join(SUFFIXES)})")
    try:
        if suffix == ".npz":
            return _read_npz(path)
        if suffix == ".safetensors":
            return _read_safetensors(path)
        if suffix == ".csv":
            return _read_csv(path)
        return _read_torch(path)
    except InputError:
        raise
    except PermissionError:
        raise InputError(str(path), "permission denied") from None
    except Exception as exc:
        raise InputError(str(path), f"not a readable {suffix} file ({type(exc).__name__}: {exc})") from None


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not zipfile.is_zipfile(path):
        raise InputError(str(path), "not a .npz archive")
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except ValueError as exc:
        raise InputError(str(path), f"holds object arrays, which would need unpickling ({exc})") from None


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.torch import load_file

    return {key: value.numpy() for key, value in load_file(str(path)).items()}


def _read_torch(path: Path) -> dict[str, np.ndarray]:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InputError(str(path), "holds objects other than tensors; refusing to unpickle it") from None
    if isinstance(loaded, torch.Tensor):
        loaded = {"inputs": loaded}
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise InputError(str(path), "must hold a tensor or a dict of named tensors")
    return {str(key): value.detach().numpy() for key, value in loaded.items()}


def _read_csv(path: Path) -> dict[str, np.ndarray]:
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if len(rows) < 2:
        raise InputError(str(path), "CSV needs a header row and at least one data row")
    header, body = rows[0], rows[1:]
    if len(set(header)) != len(header):
        raise InputError(str(path), "CSV header has duplicate column names")
    columns: dict[str, np.ndarray] = {}
    for index, name in enumerate(header):
        try:
            columns[name] = np.array([float(row[index]) for row in body], dtype=np.float64)
        except IndexError:
            raise InputError(str(path), f"a row has fewer than {len(header)} fields") from None
        except ValueError:
            raise InputError(str(path), f"column '{name}' holds a value that is not a number") from None
    return columns


def is_csv(path: Path) -> bool:
    return path.suffix.lower() == ".csv"
