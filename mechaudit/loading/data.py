"""Turn a :class:`~mechaudit.spec.DataSpec` into validated tensors: inputs, labels and named groups."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..spec import DataRef, DataSpec
from .arrays import is_csv, read_arrays
from .files import DEFAULT_MAX_BYTES
from .hashing import sha256_file
from .token_text import IDS, TokenText, from_tokenizer_loader, from_vocabulary, read_vocabulary


@dataclass
class AuditData:
    """The audit dataset. Groups are optional; rules that need one are skipped when it is absent."""

    inputs: torch.Tensor
    labels: torch.Tensor | None = None
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    concepts: dict[str, torch.Tensor] = field(default_factory=dict)
    protected: dict[str, torch.Tensor] = field(default_factory=dict)
    pairs: tuple[torch.Tensor, torch.Tensor] | None = None
    #: Prompts that differ only in a cue the output must not depend on: (with the cue, without it).
    cues: tuple[torch.Tensor, torch.Tensor] | None = None
    feature_names: list[str] | None = None
    #: Spatial concept masks, per sample (samples, *spatial) in [0, 1], for concepts declared as masks; their
    #: per-sample label (present anywhere) is in ``concepts``.
    concept_masks: dict[str, torch.Tensor] = field(default_factory=dict)
    #: Protected attributes that are input features (tabular data): name -> index of their input column.
    protected_columns: dict[str, int] = field(default_factory=dict)
    hashes: dict[str, str] = field(default_factory=dict)
    #: The text of each token id, for figures (from the spec's tokenizer or vocabulary; else ids as ``t17``).
    token_text: TokenText = IDS

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def is_spatial(self) -> bool:
        """Inputs with a channel axis and at least one spatial axis (N, C, H[, W])."""
        return self.inputs.dim() >= 3


def load_data(spec: DataSpec, task: str = "classification", max_bytes: int = DEFAULT_MAX_BYTES) -> AuditData:
    """Read and validate every array the spec names; every file read is hashed."""
    cache: dict[Path, dict[str, np.ndarray]] = {}
    tokenizer = _tokenizer_loader(spec)
    read = _reader(spec, max_bytes, tokenizer)

    def _read(ref: DataRef) -> np.ndarray:
        if ref.file not in cache:
            cache[ref.file] = read(ref.file)
        return _require_key(cache[ref.file], ref.key, ref.file)

    main = cache[spec.file] = read(spec.file)
    csv_mode = is_csv(spec.file)
    label_key = spec.labels if spec.labels is not None else ("labels" if "labels" in main else None)
    feature_names: list[str] | None = None
    if csv_mode:
        grouped = {ref.key for group in (spec.concepts, spec.pairs) for ref in group.values() if ref.file == spec.file}
        names = spec.inputs if isinstance(spec.inputs, list) else [
            c for c in main if c != label_key and c not in grouped]
        for name in names:
            _require_key(main, name, spec.file)
        if not names:
            raise InputError(str(spec.file), "CSV has no input columns")
        raw_inputs = np.stack([main[name] for name in names], axis=1)
        feature_names = list(names)
    else:
        key = spec.inputs if isinstance(spec.inputs, str) else "inputs"
        raw_inputs = _require_key(main, key, spec.file)
    inputs = _as_tensor(raw_inputs, f"{spec.file}: inputs", integer=task == "next-token")
    if inputs.dim() < 2 or inputs.shape[0] == 0:
        raise InputError(f"{spec.file}: inputs",
                         f"need at least one sample and one feature, got shape {tuple(inputs.shape)}")
    n = inputs.shape[0]
    data = AuditData(inputs=inputs, feature_names=feature_names)
    if label_key is not None:
        data.labels = task_labels(_require_key(main, label_key, spec.file), n, task,
                                  f"{spec.file}: labels '{label_key}'")
    for name, ref in spec.masks.items():
        data.masks[name] = _mask(_read(ref), inputs, f"mask '{name}'")
    for name, ref in spec.concepts.items():
        data.concepts[name], concept_mask = _concept(_read(ref), inputs, f"concept '{name}'")
        if concept_mask is not None:
            data.concept_masks[name] = concept_mask
    for name, ref in spec.protected.items():
        data.protected[name] = _per_sample(_as_tensor(_read(ref), f"protected '{name}'"), n, f"protected '{name}'")
        if feature_names is not None and ref.file == spec.file and ref.key in feature_names:
            data.protected_columns[name] = feature_names.index(ref.key)  # a CSV column that is also an input
    if spec.pairs:
        data.pairs = _pair(_read(spec.pairs["clean"]), _read(spec.pairs["corrupted"]), inputs, "pairs",
                           ("clean", "corrupted"))
    if spec.cues:
        data.cues = _pair(_read(spec.cues["with_cue"]), _read(spec.cues["without_cue"]), inputs, "cues",
                          ("with_cue", "without_cue"))
    data.token_text = _token_text(spec, tokenizer, max_bytes)
    files = {spec.file} | {ref.file for group in (spec.masks, spec.concepts, spec.protected, spec.pairs, spec.cues)
                           for ref in group.values()}
    if isinstance(spec.vocabulary, Path):
        files.add(spec.vocabulary)
    data.hashes = {str(path): sha256_file(path) for path in sorted(files)}
    return data


def _tokenizer_loader(spec: DataSpec) -> Callable[[], Any]:
    """The spec's tokenizer, loaded on the first call (offline; ``transformers`` is needed only then)."""
    loaded: list = []

    def tokenizer():
        if not loaded:
            from .huggingface import model_directory
            from .text import load_tokenizer

            where = spec.tokenizer or {}
            directory = where["path"] if "path" in where else model_directory(
                package=where["package"], subdir=where["subdir"], require="")
            loaded.append(load_tokenizer(directory))
        return loaded[0]
    return tokenizer


def _reader(spec: DataSpec, max_bytes: int, tokenizer: Callable[[], Any]):
    """``path -> {key: array}``: array files as they are, JSONL files tokenized (their text fields are the keys the
    spec names for inputs, pairs and cues)."""

    def read(path: Path) -> dict[str, np.ndarray]:
        if path.suffix.lower() != ".jsonl":
            return read_arrays(path, max_bytes)
        from .text import jsonl_arrays

        fields = {ref.key for group in (spec.pairs, spec.cues) for ref in group.values() if ref.file == path}
        if path == spec.file:
            fields.add(spec.inputs if isinstance(spec.inputs, str) else "inputs")
        return jsonl_arrays(path, tokenizer(), fields, spec.max_length, max_bytes)
    return read


def _token_text(spec: DataSpec, tokenizer: Callable[[], Any], max_bytes: int) -> TokenText:
    """How the report names token ids: the declared tokenizer (loaded when a figure first names a token), else the
    declared vocabulary, else ids."""
    if spec.tokenizer is not None:
        return from_tokenizer_loader(tokenizer)
    if isinstance(spec.vocabulary, Path):
        return from_vocabulary(read_vocabulary(spec.vocabulary, max_bytes))
    return from_vocabulary(spec.vocabulary) if spec.vocabulary else IDS


def _pair(first: np.ndarray, second: np.ndarray, inputs: torch.Tensor, group: str,
          names: tuple[str, str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Two arrays of paired samples, shaped like the inputs (and of their dtype: token ids stay integers)."""
    integer = not inputs.is_floating_point()
    a = _as_tensor(first, f"{group} '{names[0]}'", integer=integer)
    b = _as_tensor(second, f"{group} '{names[1]}'", integer=integer)
    if a.shape != b.shape:
        raise InputError(group, f"{names[0]} {tuple(a.shape)} and {names[1]} {tuple(b.shape)} differ in shape")
    if a.shape[1:] != inputs.shape[1:]:
        raise InputError(group, f"sample shape {tuple(a.shape[1:])} differs from inputs {tuple(inputs.shape[1:])}")
    return a, b


def _require_key(arrays: dict[str, np.ndarray], key: str, path: Path) -> np.ndarray:
    if key not in arrays:
        available = ", ".join(sorted(arrays)[:12]) or "none"
        raise InputError(str(path), f"has no array '{key}' (it has: {available})")
    return arrays[key]


def _as_tensor(array: np.ndarray, what: str, integer: bool = False) -> torch.Tensor:
    if array.dtype.kind not in "biuf":
        raise InputError(what, f"has dtype {array.dtype}; expected numbers")
    if array.dtype.kind == "f":
        bad = int(np.size(array) - np.isfinite(array).sum())
        if bad:
            raise InputError(what, f"contains {bad} NaN or infinite value{'s' if bad > 1 else ''}")
    if integer:
        if array.dtype.kind == "f" and not np.all(np.equal(np.mod(array, 1), 0)):
            raise InputError(what, "must hold whole numbers (class indices)")
        return torch.from_numpy(np.ascontiguousarray(array)).long()
    with np.errstate(over="ignore"):
        converted = np.ascontiguousarray(array, dtype=np.float32)
    if array.size and not np.isfinite(converted).all():  # finite before: beyond float32's range
        largest = float(np.abs(array.astype(np.float64)).max())
        raise InputError(what, f"holds values up to {largest:.3g}, beyond the float32 range the model computes in "
                               "(about 3.4e38); rescale the data")
    return torch.from_numpy(converted)


def task_labels(array: np.ndarray, n: int, task: str, what: str) -> torch.Tensor:
    """Labels for ``task``: one class index per sample, or for regression one target per sample (n,) or several
    (n, outputs...), e.g. a forecaster's horizon; whether they fit the model's outputs is checked once it ran."""
    labels = _as_tensor(array, what, integer=task != "regression")
    if task == "regression" and labels.dim() >= 2 and labels.shape[0] == n and labels[0].numel() > 1:
        return labels
    return _per_sample(labels, n, what)


def _per_sample(values: torch.Tensor, n: int, what: str) -> torch.Tensor:
    values = values.squeeze(-1) if values.dim() == 2 and values.shape[1] == 1 else values
    if values.dim() != 1 or values.shape[0] != n:
        raise InputError(what, f"has shape {tuple(values.shape)}; expected one value per sample ({n},)")
    return values


def _concept(array: np.ndarray, inputs: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-sample concept labels, or a spatial concept mask per sample ((samples, *spatial) or (samples, 1,
    *spatial), values in [0, 1]) with its per-sample label: whether the concept is present anywhere."""
    n, spatial = inputs.shape[0], tuple(inputs.shape[2:])
    if array.ndim <= 1 or (array.ndim == 2 and array.shape[1] == 1) or not spatial:
        return _per_sample(_as_tensor(array, what, integer=True), n, what), None
    mask = _as_tensor(array, what)
    if mask.dim() == len(spatial) + 2 and mask.shape[1] == 1:
        mask = mask.squeeze(1)
    if tuple(mask.shape) != (n, *spatial):
        raise InputError(what, f"has shape {tuple(array.shape)}; expected one label per sample ({n},) or a mask "
                               f"per sample {(n, *spatial)}")
    if mask.min() < 0 or mask.max() > 1:
        raise InputError(what, "mask values must lie in [0, 1]")
    return (mask.flatten(1).amax(1) > 0).long(), mask


def _mask(array: np.ndarray, inputs: torch.Tensor, what: str) -> torch.Tensor:
    mask = _as_tensor(array, what)
    sample_shape = inputs.shape[1:]
    extra = mask.dim() - len(sample_shape)
    if 0 < extra and mask.shape[:extra] == (1,) * extra:  # (1, L) for 1-D inputs (L,): one mask for every sample
        mask = mask.reshape(mask.shape[extra:])
    if mask.shape not in (sample_shape, inputs.shape):
        try:
            mask = torch.broadcast_to(mask, sample_shape).clone()
        except RuntimeError:
            raise InputError(what, f"has shape {tuple(mask.shape)}; expected {tuple(sample_shape)} "
                                   f"or {tuple(inputs.shape)} to match the inputs") from None
    if mask.min() < 0 or mask.max() > 1:
        raise InputError(what, "values must lie in [0, 1]")
    if mask.sum() == 0:
        raise InputError(what, "is empty (all zeros)")
    return mask
