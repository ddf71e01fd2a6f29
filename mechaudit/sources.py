"""Where in the user's repository a finding points: the source line of a layer's model class, or the line of
the spec that declares the rule or input. SARIF and GitHub annotations place findings there.

Paths are relative to the repository root: the nearest ancestor of the spec (or, without a spec, of the working
directory) that holds ``.git`` or ``pyproject.toml``. Files outside it (torch's own modules, an installed
package) are never pointed at.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

from torch import nn

from .spec import project_root

_HEADER = re.compile(r"^\s*\[\[?\s*(?P<name>[^\[\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*(?P<key>[A-Za-z0-9_\-\"'.]+?)\s*=")


def source_locations(spec_file: Path | None, model: nn.Module, layers: list[str], rule_ids: list[str],
                     selectors: dict[str, tuple[str, ...]],
                     anchors: tuple[Path | str | None, ...] = ()) -> dict[str, Any]:
    """``{"spec": {uri, rules: {id: line}, inputs: {name: line}}, "layers": {layer: {uri, line, symbol}}}``,
    and without a spec ``"anchor": {uri}``: the first of ``anchors`` (model and data files) in the repository.

    ``selectors`` holds the ``select`` / ``extend_select`` in effect, to find the spec line that enabled a rule.
    """
    root = project_root(spec_file if spec_file is not None else Path.cwd())
    locations: dict[str, Any] = {}
    if spec_file is not None and spec_file.resolve().is_relative_to(root):
        locations["spec"] = _spec_lines(spec_file.resolve(), root, rule_ids, selectors)
    else:
        files = [Path(p).resolve() for p in anchors if p is not None and Path(p).is_file()]
        inside = [p for p in files if p.is_relative_to(root)]
        if inside:
            locations["anchor"] = {"uri": inside[0].relative_to(root).as_posix()}
    layer_lines = {}
    cache: dict[type, tuple[str, int, list[str]] | None] = {}
    modules = dict(model.named_modules())
    for layer in layers:
        found = _owner_line(layer, modules, root, cache)
        if found is not None:
            layer_lines[layer] = found
    if layer_lines:
        locations["layers"] = layer_lines
    return locations


def _owner_line(layer: str, modules: dict[str, nn.Module], root: Path,
                cache: dict[type, tuple[str, int, list[str]] | None]) -> dict[str, Any] | None:
    """The deepest module on ``layer``'s path whose class is defined inside ``root``; the line in that class
    that assigns the child on the path (``self.features = ...``), else the ``class`` line."""
    parts = layer.split(".")
    for depth in range(len(parts), -1, -1):
        owner = modules.get(".".join(parts[:depth]))
        if owner is None:
            continue
        source = _class_source(type(owner), root, cache)
        if source is None:
            continue
        uri, first_line, lines = source
        line = first_line
        if depth < len(parts):
            assign = re.compile(rf"^\s*self\.{re.escape(parts[depth])}\s*(:[^=]*)?=")
            line = next((first_line + i for i, text in enumerate(lines) if assign.match(text)), first_line)
        return {"uri": uri, "line": line, "symbol": type(owner).__qualname__}
    return None


def _class_source(cls: type, root: Path, cache: dict) -> tuple[str, int, list[str]] | None:
    if cls not in cache:
        cache[cls] = None
        if not cls.__module__.startswith("torch."):
            try:
                path = Path(inspect.getsourcefile(cls) or "").resolve()
                lines, first = inspect.getsourcelines(cls)
            except (TypeError, OSError):
                return None
            if path.is_file() and path.is_relative_to(root):
                cache[cls] = (path.relative_to(root).as_posix(), max(first, 1), lines)
    return cache[cls]


def _spec_lines(spec_file: Path, root: Path, rule_ids: list[str],
                selectors: dict[str, tuple[str, ...]]) -> dict[str, Any]:
    headers, keys = _scan_toml(spec_file)
    audit_line = headers.get("audit")
    fallback = keys.get(("audit", "rulebook")) or audit_line or 1
    rules = {}
    for rule_id in rule_ids:
        line = headers.get(f"audit.rules.{rule_id}") or keys.get(("audit", f"rules.{rule_id}"))
        if line is None and any(_matches(rule_id, s) for s in selectors.get("extend_select", ())):
            line = keys.get(("audit", "extend-select")) or keys.get(("audit", "extend_select"))
        if line is None and any(_matches(rule_id, s) for s in selectors.get("select", ())):
            line = keys.get(("audit", "select"))
        rules[rule_id] = line or fallback
    inputs = {key: line for (table, key), line in keys.items()
              if table in ("data.masks", "data.concepts", "data.protected", "data.pairs")}
    for (table, key), line in keys.items():  # dotted keys under [data]: masks.watermark = "..."
        if table == "data" and key.split(".")[0] in ("masks", "concepts", "protected", "pairs") and "." in key:
            inputs.setdefault(key.split(".", 1)[1], line)
    return {"uri": spec_file.relative_to(root).as_posix(), "rules": rules, "inputs": inputs}


def anchor_files(spec) -> tuple[Path | None, ...]:
    """The files a result may point at when nothing better is known: the model file, the factory's module,
    the weights, the data file (an :class:`~mechaudit.spec.AuditSpec`'s)."""
    model, module = spec.model, None
    if model.factory and ":" in model.factory:
        import importlib.util

        try:
            found = importlib.util.find_spec(model.factory.split(":")[0])
            module = Path(found.origin) if found is not None and found.origin else None
        except (ImportError, ValueError):
            module = None
    return (model.torchscript, model.pickle, module, model.weights, spec.data.file)


def _matches(rule_id: str, selector: str) -> bool:
    return selector == "ALL" or rule_id.startswith(selector)


def _scan_toml(path: Path) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    """Line numbers (1-based) of the table headers and keys of a TOML file (multi-line strings skipped)."""
    headers: dict[str, int] = {}
    keys: dict[tuple[str, str], int] = {}
    table, in_string = "", None
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if in_string:
            if line.count(in_string) % 2 == 1:
                in_string = None
            continue
        header = _HEADER.match(line)
        if header:
            table = ".".join(part.strip().strip("\"'") for part in header.group("name").split("."))
            headers.setdefault(table, number)
            continue
        key = _KEY.match(line)
        if key:
            keys.setdefault((table, key.group("key").replace('"', "").replace("'", "")), number)
            for quote in ('"""', "'''"):
                if line.count(quote) % 2 == 1:
                    in_string = quote
    return headers, keys
