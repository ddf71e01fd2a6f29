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
        if zipfile.is_zipfile(path):  # .npz, and .pt written by torch.save: bounded before anything is inflated
            _check_unpacked_size(path, max_bytes)
        if suffix == ".npz":
            return _read_npz(path, max_bytes)
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


def _check_unpacked_size(path: Path, max_bytes: int) -> None:
    """Refuse an archive whose members unpack to more than ``max_bytes`` (a small file can inflate to gigabytes)."""
    with zipfile.ZipFile(path) as archive:
        total = sum(member.file_size for member in archive.infolist())
    if total > max_bytes:
        raise InputError(str(path), f"unpacks to {total / 2**20:.0f} MiB, above the limit of "
                                    f"{max_bytes / 2**20:.0f} MiB (raise it with --max-file-mb)")


def _check_npy_headers(archive: zipfile.ZipFile, max_bytes: int, path: Path) -> None:
    """Each ``.npy`` member's declared shape fits the limit and the member's actual size (a header can claim a
    shape far larger than the data, and numpy allocates it before reading)."""
    for member in archive.infolist():
        with archive.open(member) as handle:
            if handle.read(len(np.lib.format.MAGIC_PREFIX)) != np.lib.format.MAGIC_PREFIX:
                continue  # not an array: numpy returns such members as bytes
            handle.seek(0)
            version = np.lib.format.read_magic(handle)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(handle)
        declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if declared > min(max_bytes, member.file_size):
            raise InputError(str(path), f"array '{member.filename}' declares {declared / 2**20:.0f} MiB of data but "
                                        f"holds {member.file_size / 2**20:.1f} MiB")


def _read_npz(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, np.ndarray]:
    if not zipfile.is_zipfile(path):
        raise InputError(str(path), "not a .npz archive")
    with zipfile.ZipFile(path) as members:
        _check_npy_headers(members, max_bytes, path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except ValueError as exc:
        raise InputError(str(path), f"holds object arrays, which would need unpickling ({exc})") from None


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.torch import load_file

    return {key: _numpy(value) for key, value in load_file(str(path)).items()}


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    """A tensor as a NumPy array; bfloat16 (which NumPy lacks) widened to float32, exactly."""
    tensor = tensor.detach()
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()


def _read_torch(path: Path) -> dict[str, np.ndarray]:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InputError(str(path), "holds objects other than tensors; refusing to unpickle it") from None
    if isinstance(loaded, torch.Tensor):
        loaded = {"inputs": loaded}
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise InputError(str(path), "must hold a tensor or a dict of named tensors")
    return {str(key): _numpy(value) for key, value in loaded.items()}


def _read_csv(path: Path) -> dict[str, np.ndarray]:
    with open(path, newline="", encoding="utf-8-sig") as handle:  # a byte-order mark (Excel) is dropped
        rows = list(csv.reader(handle))
    if len(rows) < 2:
        raise InputError(str(path), "CSV needs a header row and at least one data row")
    header, body = rows[0], rows[1:]
    if len(set(header)) != len(header):
        raise InputError(str(path), "CSV header has duplicate column names")
    long = next((number for number, row in enumerate(body, start=2) if len(row) > len(header)), None)
    if long is not None:
        raise InputError(f"{path}:{long}", f"row has {len(body[long - 2])} fields, more than the header's "
                                           f"{len(header)} (an unquoted comma?)")
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
