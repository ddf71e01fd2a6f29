"""The audit spec: which model, which data, which task, which options.

A spec is a TOML file (see README, "The spec format"); the same essentials can come from command-line flags,
and defaults from ``[tool.mechaudit]`` in the nearest ``pyproject.toml``. Precedence: flags > spec > pyproject.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import tomllib

from .errors import InputError

TASKS = ("classification", "regression", "next-token")
FAIL_ON = ("info", "warning", "error", "never")
DEVICES = ("auto", "cpu", "cuda")
DTYPE_NAMES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class DataRef:
    """An array in a data file: ``key`` in ``file`` (a column name for CSV files)."""

    file: Path
    key: str


@dataclass(frozen=True)
class ModelSpec:
    name: str
    factory: str | None = None
    factory_args: dict[str, Any] = field(default_factory=dict)
    weights: Path | None = None
    torchscript: Path | None = None
    pickle: Path | None = None
    #: An ONNX file (mechaudit.loading.onnx), converted to a module.
    onnx: Path | None = None
    #: Keyword arguments every forward call gets, e.g. ``{"sr": 16000}`` (mechaudit.loading.forward_kwargs; for
    #: ONNX: the graph's other inputs).
    forward_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DataSpec:
    file: Path
    inputs: str | list[str] | None = None
    labels: str | None = None
    masks: dict[str, DataRef] = field(default_factory=dict)
    concepts: dict[str, DataRef] = field(default_factory=dict)
    protected: dict[str, DataRef] = field(default_factory=dict)
    pairs: dict[str, DataRef] = field(default_factory=dict)
    cues: dict[str, DataRef] = field(default_factory=dict)
    #: For JSONL text data: the tokenizer, ``{"path": Path}`` or ``{"package": name, "subdir": dir}``.
    tokenizer: dict[str, Any] | None = None
    #: How token ids read in reports when no tokenizer is declared: a vocabulary file (one token a line) or the
    #: tokens themselves (mechaudit.loading.token_text).
    vocabulary: Path | tuple[str, ...] | None = None
    max_length: int = 64


@dataclass(frozen=True)
class Options:
    """How to run the audit; every field can also be set in ``[tool.mechaudit]`` and on the command line."""

    rulebook: str = "default"
    select: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    extend_select: tuple[str, ...] = ()
    layers: tuple[str, ...] = ()
    fail_on: str = "error"
    seed: int = 0
    device: str = "auto"
    #: The dtype of the model's forward passes (float32, bfloat16, float16); statistics stay in float32.
    dtype: str = "float32"
    batch_size: int = 256
    max_samples: int = 2048
    rule_timeout: int = 600
    max_file_mb: int = 4096
    trust_pickle: bool = False
    #: A waiver file (absolute path once parsed; relative paths are relative to the file that declares them).
    waivers: str = ""
    #: Per-rule overrides ``[rules.<ID>]``, in rising precedence: ``(rule_id, where, table)``; see mechaudit.config.
    rules: tuple[tuple[str, str, dict[str, Any]], ...] = ()
    #: Regression tolerance for ``mechaudit diff`` / ``--baseline``, per metric:
    #: ``((metric or "default", value), ...)``.
    tolerance: tuple[tuple[str, float], ...] = ()


BEHAVIOURS = ("predicted_logit", "class_logit", "label_logit", "logit_diff", "loss", "similarity", "output")
BEHAVIOUR_SAMPLES = ("all", "target")


@dataclass(frozen=True)
class BehaviourSpec:
    """The behaviour that circuit rules explain (``[behaviour]``): a class logit, a logit difference, the loss.

    ``target`` and ``contrast`` are class names (or indices); ``samples = "target"`` restricts the behaviour to
    the samples labelled ``target``; ``label_logit`` is the logit of each sample's own label. For a next-token
    model (outputs (samples, positions, vocabulary)) the behaviour reads the logits at token ``position``
    (default -1, the last), where the label is the correct next token. ``similarity`` (encoders, with pairs): the
    cosine similarity of each clean prompt's output to its paired prompt's output on the unmodified model.
    ``output`` (regression): the model's output reduced to one value per sample as ``[task] output`` says.
    """

    kind: str = "predicted_logit"
    target: str | None = None
    contrast: str | None = None
    samples: str = "all"
    position: int = -1


@dataclass(frozen=True)
class FactSpec:
    """One fact to edit (``[[edit.facts]]``), prompts as token ids: ``prompt`` ends where the attribute comes,
    ``subject`` is a run of its tokens, ``target_new`` the attribute token to write; ``target_true`` the one it
    replaces (default: the model's prediction); ``paraphrases`` measure generalisation; ``unrelated`` prompts
    measure specificity (default: the audit prompts that do not contain the subject)."""

    prompt: tuple[int, ...]
    subject: tuple[int, ...]
    target_new: int
    target_true: int | None = None
    paraphrases: tuple[tuple[int, ...], ...] = ()
    unrelated: tuple[tuple[int, ...], ...] = ()


@dataclass(frozen=True)
class EditSpec:
    """``[edit]``: the facts ``mechaudit edit --rome`` writes, and where (module paths; found when not given)."""

    facts: tuple[FactSpec, ...] = ()
    #: The projection that takes the edit (e.g. ``blocks.0.mlp.2``); default: the layer causal tracing picks.
    layer: str | None = None
    #: The token embedding that causal tracing corrupts (default: the largest nn.Embedding).
    embedding: str | None = None
    #: The list of blocks (default: the longest ModuleList of identical blocks).
    blocks: str | None = None
    #: The MLP output projection inside each block (default: the last linear map of its MLP).
    projection: str | None = None


@dataclass(frozen=True)
class AuditSpec:
    model: ModelSpec
    data: DataSpec
    task: str = "classification"
    class_names: tuple[str, ...] = ()
    scope: dict[str, str] = field(default_factory=dict)
    options: Options = field(default_factory=Options)
    source: Path | None = None
    behaviour: BehaviourSpec | None = None
    #: Regression with several outputs per sample: how rules that need one value per sample read them, ``"mean"``
    #: or an output index (:mod:`mechaudit.techniques.output_reduction`).
    output: str | int = "mean"
    #: ``[edit]``: facts for ``mechaudit edit --rome``, or None.
    edit: EditSpec | None = None


_OPTION_TYPES: dict[str, Any] = {
    "rulebook": str,
    "select": list,
    "ignore": list,
    "extend_select": list,
    "layers": list,
    "fail_on": str,
    "seed": int,
    "device": str,
    "dtype": str,
    "batch_size": int,
    "max_samples": int,
    "rule_timeout": int,
    "max_file_mb": int,
    "trust_pickle": bool,
    "waivers": str,
}
_MERGED_OPTIONS = ("rules", "tolerance")  # tables merged over the lower levels by mechaudit.config
_GROUPS = ("masks", "concepts", "protected", "pairs", "cues")


def read_toml(path: Path) -> dict[str, Any]:
    """Read a TOML file, turning every failure into an :class:`InputError` naming the file."""
    if not path.exists():
        raise InputError(str(path), "file not found")
    if not path.is_file():
        raise InputError(str(path), "is not a file")
    try:
        text = path.read_text(encoding="utf-8")
        if text.startswith("\ufeff"):
            raise InputError(str(path), "starts with a UTF-8 byte-order mark, which TOML does not allow; save it "
                                        "as UTF-8 without BOM")
        return tomllib.loads(text)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(str(path), f"not valid TOML ({exc})") from None
    except RecursionError:
        raise InputError(str(path), "not valid TOML (nested too deeply)") from None
    except OSError as exc:
        raise InputError(str(path), f"cannot be read ({exc.strerror})") from None


def _check_keys(table: Any, allowed: set[str], where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise InputError(where, f"must be a table, not {type(table).__name__}")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise InputError(where, f"unknown key '{unknown[0]}' (allowed: {', '.join(sorted(allowed))})")
    return table


def _typed(value: Any, kind: type, where: str) -> Any:
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok, value = True, float(value)
    if not ok:
        raise InputError(where, f"must be {kind.__name__}, not {type(value).__name__} ({value!r})")
    if kind is list and not all(isinstance(v, str) for v in value):
        raise InputError(where, "must be a list of strings")
    return value


def parse_options(table: dict[str, Any], where: str, base: Options | None = None) -> Options:
    """Validate an options table (``[audit]`` of a spec, ``[tool.mechaudit]``) over ``base``."""
    table = {k.replace("-", "_"): v for k, v in _check_keys(table, _option_keys(), where).items()}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key in _MERGED_OPTIONS:
            from .config import merge_option

            values[key] = merge_option(key, value, f"{where}.{key}", getattr(base or Options(), key))
            continue
        value = _typed(value, _OPTION_TYPES[key], f"{where}.{key}")
        values[key] = tuple(value) if isinstance(value, list) else value
    return validate_options(replace(base or Options(), **values), where)


def _option_keys() -> set[str]:
    names = {f.name for f in fields(Options)}
    return names | {n.replace("_", "-") for n in names}


def validate_options(options: Options, where: str = "options") -> Options:
    if options.fail_on not in FAIL_ON:
        raise InputError(f"{where}.fail-on", f"'{options.fail_on}' is not one of {', '.join(FAIL_ON)}")
    if options.device not in DEVICES:
        raise InputError(f"{where}.device", f"'{options.device}' is not one of {', '.join(DEVICES)}")
    if options.dtype not in DTYPE_NAMES:
        raise InputError(f"{where}.dtype", f"'{options.dtype}' is not one of {', '.join(DTYPE_NAMES)}")
    if options.batch_size < 1:
        raise InputError(f"{where}.batch-size", "must be at least 1")
    if options.max_samples < 1:
        raise InputError(f"{where}.max-samples", "must be at least 1")
    if options.rule_timeout < 0:
        raise InputError(f"{where}.rule-timeout", "must be 0 (no limit) or a number of seconds")
    if options.max_file_mb < 1:
        raise InputError(f"{where}.max-file-mb", "must be at least 1")
    if not 0 <= options.seed < 2**32:
        raise InputError(f"{where}.seed", "must be between 0 and 2**32 - 1")
    return options


def pyproject_options(start: Path) -> Options:
    """Options from ``[tool.mechaudit]`` in the nearest ``pyproject.toml`` at or above ``start``."""
    for directory in (start, *start.parents):
        candidate = directory / "pyproject.toml"
        if candidate.is_file():
            table = read_toml(candidate).get("tool", {}).get("mechaudit")
            return Options() if table is None else tool_options(table, candidate)
    return Options()


def tool_options(table: Any, source: Path) -> Options:
    """Options from the ``[tool.mechaudit]`` table of ``source``; a waiver file is relative to ``source``, and so
    is a rulebook file (which must exist and stay inside ``source``'s project, as a spec's)."""
    where = f"{source} [tool.mechaudit]"
    options = parse_options(table, where)
    if options.waivers:  # relative to the file that names it
        options = replace(options, waivers=str(source.parent.resolve() / options.waivers))
    if "rulebook" in table and _is_path(options.rulebook):  # a file, not a built-in name
        rulebook = _PathResolver(source)(options.rulebook, f"{where}.rulebook")
        if not rulebook.is_file():
            raise InputError(f"{where}.rulebook", f"rulebook file '{options.rulebook}' not found (looked for "
                                                  f"{rulebook}, relative to {source.name})")
        options = replace(options, rulebook=str(rulebook))
    return options


def project_root(path: Path) -> Path:
    """The project ``path`` (a spec or other file, or a directory) lies in: the nearest directory at or above it
    with pyproject.toml or .git, else the file's own folder. A spec's paths must stay inside it; reports and
    manifests key paths relative to it."""
    path = path.resolve()
    first = path if path.is_dir() else path.parent
    for directory in (first, *first.parents):
        if (directory / "pyproject.toml").exists() or (directory / ".git").exists():
            return directory
    return first


class _PathResolver:
    def __init__(self, spec_file: Path) -> None:
        self.base = spec_file.parent.resolve()
        self.root = project_root(spec_file.resolve())
        self.spec_file = spec_file

    def __call__(self, value: Any, where: str) -> Path:
        value = _typed(value, str, where)
        path = (self.base / value).resolve()
        if not path.is_relative_to(self.root):
            raise InputError(where, f"path '{value}' leaves the project directory {self.root}")
        return path


def load_spec(path: Path, base: Options | None = None) -> AuditSpec:
    """Parse and validate a spec file; paths in it are relative to the file."""
    raw = read_toml(path)
    name = str(path)
    _check_keys(raw, {"model", "data", "task", "audit", "scope", "behaviour", "edit"}, name)
    for section in ("model", "data"):
        if section not in raw:
            raise InputError(name, f"missing section [{section}]")
    resolve = _PathResolver(path)
    model = _parse_model(raw["model"], f"{name} [model]", resolve, default_name=path.stem)
    data = _parse_data(raw["data"], f"{name} [data]", resolve)
    task, class_names, output = _parse_task(raw.get("task", {}), f"{name} [task]")
    scope = {k: _typed(v, str, f"{name} [scope].{k}") for k, v in _check_keys(
        raw.get("scope", {}), {"intended_use", "out_of_scope", "owner", "notes"}, f"{name} [scope]").items()}
    options = parse_options(raw.get("audit", {}), f"{name} [audit]", base)
    if "waivers" in raw.get("audit", {}):
        options = replace(options, waivers=str(resolve(options.waivers, f"{name} [audit].waivers")))
    if "rulebook" in raw.get("audit", {}) and _is_path(options.rulebook):  # a file, not a built-in name
        options = replace(options, rulebook=str(resolve(options.rulebook, f"{name} [audit].rulebook")))
    behaviour = parse_behaviour(raw["behaviour"], f"{name} [behaviour]") if "behaviour" in raw else None
    if behaviour is not None and behaviour.kind == "output" and task != "regression":
        raise InputError(f"{name} [behaviour].kind", "'output' is a regression model's behaviour; a classifier's "
                                                    "is read from its logits")
    edit = parse_edit(raw["edit"], f"{name} [edit]") if "edit" in raw else None
    return AuditSpec(model, data, task, class_names, scope, options, source=path.resolve(), behaviour=behaviour,
                     output=output, edit=edit)


def _is_path(rulebook: str) -> bool:
    return rulebook.endswith(".toml") or "/" in rulebook or "\\" in rulebook


def _parse_model(table: Any, where: str, resolve: _PathResolver, default_name: str) -> ModelSpec:
    table = _check_keys(table, {"name", "factory", "factory_args", "weights", "torchscript", "pickle", "onnx",
                                "forward_kwargs"}, where)
    sources = [k for k in ("factory", "torchscript", "pickle", "onnx") if k in table]
    if len(sources) != 1:
        raise InputError(where, "name exactly one of 'factory', 'torchscript', 'pickle' or 'onnx'")
    if "weights" in table and "factory" not in table:
        raise InputError(where, "'weights' goes with 'factory'")
    factory = _typed(table["factory"], str, f"{where}.factory") if "factory" in table else None
    if factory is not None and ":" not in factory:
        raise InputError(f"{where}.factory", f"'{factory}' is not of the form module:callable")
    return ModelSpec(
        name=_typed(table.get("name", default_name), str, f"{where}.name"),
        factory=factory,
        factory_args=_typed(table.get("factory_args", {}), dict, f"{where}.factory_args"),
        weights=_parse_weights(table["weights"], f"{where}.weights", resolve) if "weights" in table else None,
        torchscript=resolve(table["torchscript"], f"{where}.torchscript") if "torchscript" in table else None,
        pickle=resolve(table["pickle"], f"{where}.pickle") if "pickle" in table else None,
        onnx=resolve(table["onnx"], f"{where}.onnx") if "onnx" in table else None,
        forward_kwargs=_typed(table.get("forward_kwargs", {}), dict, f"{where}.forward_kwargs"),
    )


def _parse_weights(value: Any, where: str, resolve: _PathResolver) -> Path:
    """A weights file: a path in the project, or ``{ package = NAME, path = FILE }`` inside an installed package."""
    if isinstance(value, str):
        return resolve(value, where)
    table = _check_keys(value, {"package", "path"}, where)
    if set(table) != {"package", "path"}:
        raise InputError(where, "must be a path or a table { package = NAME, path = FILE }")
    from .loading.packaged import packaged_file

    return packaged_file(_typed(table["package"], str, f"{where}.package"), _typed(table["path"], str,
                                                                                    f"{where}.path"), where)


def _parse_data(table: Any, where: str, resolve: _PathResolver) -> DataSpec:
    table = _check_keys(table, {"file", "inputs", "labels", "tokenizer", "vocabulary", "max_length", *_GROUPS}, where)
    if "file" not in table:
        raise InputError(where, "missing key 'file'")
    file = resolve(table["file"], f"{where}.file")
    tokenizer = _parse_tokenizer(table["tokenizer"], f"{where}.tokenizer", resolve) if "tokenizer" in table else None
    if file.suffix.lower() == ".jsonl" and tokenizer is None:
        raise InputError(where, "JSONL text data needs 'tokenizer' (a local directory, or { package, subdir })")
    vocabulary = _parse_vocabulary(table["vocabulary"], f"{where}.vocabulary", resolve) \
        if "vocabulary" in table else None
    if vocabulary is not None and tokenizer is not None:
        raise InputError(where, "give 'tokenizer' or 'vocabulary', not both (the tokenizer names the tokens)")
    max_length = _typed(table.get("max_length", 64), int, f"{where}.max_length")
    if max_length < 1:
        raise InputError(f"{where}.max_length", "must be at least 1")
    inputs = table.get("inputs")
    if inputs is not None and not isinstance(inputs, (str, list)):
        raise InputError(f"{where}.inputs", "must be a key or a list of CSV columns")
    if isinstance(inputs, list):
        _typed(inputs, list, f"{where}.inputs")
    labels = _typed(table["labels"], str, f"{where}.labels") if "labels" in table else None
    groups: dict[str, dict[str, DataRef]] = {}
    for group in _GROUPS:
        entries = _typed(table.get(group, {}), dict, f"{where}.{group}")
        groups[group] = {name: _parse_ref(ref, f"{where}.{group}.{name}", file, resolve)
                         for name, ref in entries.items()}
    if groups["pairs"] and set(groups["pairs"]) != {"clean", "corrupted"}:
        raise InputError(f"{where}.pairs", "must name exactly 'clean' and 'corrupted'")
    if groups["cues"] and set(groups["cues"]) != {"with_cue", "without_cue"}:
        raise InputError(f"{where}.cues", "must name exactly 'with_cue' and 'without_cue'")
    return DataSpec(file=file, inputs=inputs, labels=labels, **groups, tokenizer=tokenizer, vocabulary=vocabulary,
                    max_length=max_length)


def _parse_tokenizer(value: Any, where: str, resolve: _PathResolver) -> dict[str, Any]:
    if isinstance(value, str):
        return {"path": resolve(value, where)}
    table = _check_keys(value, {"package", "subdir"}, where)
    if "package" not in table:
        raise InputError(where, "must be a directory or a table { package = NAME, subdir = DIR }")
    subdir = _typed(table.get("subdir", ""), str, f"{where}.subdir")
    if Path(subdir).is_absolute() or ".." in Path(subdir).parts:
        raise InputError(f"{where}.subdir", f"'{subdir}' leaves the package directory (give a path inside it)")
    return {"package": _typed(table["package"], str, f"{where}.package"), "subdir": subdir}


def _parse_vocabulary(value: Any, where: str, resolve: _PathResolver) -> Path | tuple[str, ...]:
    if isinstance(value, str):
        return resolve(value, where)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise InputError(where, "must be a file (one token a line) or a non-empty list of strings")
    return tuple(value)


def _parse_ref(value: Any, where: str, default_file: Path, resolve: _PathResolver) -> DataRef:
    if isinstance(value, str):
        return DataRef(default_file, value)
    table = _check_keys(value, {"file", "key"}, where)
    if "key" not in table:
        raise InputError(where, "missing key 'key'")
    file = resolve(table["file"], f"{where}.file") if "file" in table else default_file
    return DataRef(file, _typed(table["key"], str, f"{where}.key"))


def parse_behaviour(table: Any, where: str) -> BehaviourSpec:
    table = _check_keys(table, {"kind", "target", "contrast", "samples", "position"}, where)
    values = {key: _typed(value, int if key == "position" else str, f"{where}.{key}")
              for key, value in table.items()}
    behaviour = BehaviourSpec(**values)
    if behaviour.kind not in BEHAVIOURS:
        raise InputError(f"{where}.kind", f"'{behaviour.kind}' is not one of {', '.join(BEHAVIOURS)}")
    if behaviour.samples not in BEHAVIOUR_SAMPLES:
        raise InputError(f"{where}.samples", f"'{behaviour.samples}' is not one of {', '.join(BEHAVIOUR_SAMPLES)}")
    if behaviour.kind == "class_logit" and behaviour.target is None:
        raise InputError(where, "kind 'class_logit' needs 'target' (a class name)")
    if behaviour.samples == "target" and behaviour.target is None:
        raise InputError(where, "samples = 'target' needs 'target'")
    return behaviour


def check_output(value: Any, where: str) -> str | int:
    """``[task] output``: ``"mean"`` or an output index."""
    if value != "mean" and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise InputError(where, f"must be \"mean\" or an output index (0, 1, ...), not {value!r}")
    return value


def _parse_task(table: Any, where: str) -> tuple[str, tuple[str, ...], str | int]:
    table = _check_keys(table, {"kind", "class_names", "output"}, where)
    kind = _typed(table.get("kind", "classification"), str, f"{where}.kind")
    if kind not in TASKS:
        raise InputError(f"{where}.kind", f"'{kind}' is not one of {', '.join(TASKS)}")
    names = tuple(_typed(table.get("class_names", []), list, f"{where}.class_names"))
    if len(set(names)) != len(names):
        raise InputError(f"{where}.class_names", "class names must be unique")
    output = check_output(table.get("output", "mean"), f"{where}.output")
    if "output" in table and kind != "regression":
        raise InputError(f"{where}.output", "applies to regression only (classifiers are read by their logits)")
    return kind, names, output


_FACT_KEYS = {"prompt", "subject", "target_new", "target_true", "paraphrases", "unrelated"}


def parse_edit(table: Any, where: str) -> EditSpec:
    """``[edit]``: module paths (strings) and ``[[edit.facts]]``."""
    table = _check_keys(table, {"facts", "layer", "embedding", "blocks", "projection"}, where)
    paths = {key: _typed(table[key], str, f"{where}.{key}") for key in ("layer", "embedding", "blocks", "projection")
             if key in table}
    facts = table.get("facts", [])
    if not isinstance(facts, list):
        raise InputError(f"{where}.facts", "must be an array of tables ([[edit.facts]])")
    return EditSpec(tuple(parse_fact(fact, f"{where}.facts[{i}]") for i, fact in enumerate(facts)), **paths)


def parse_fact(table: Any, where: str) -> FactSpec:
    """One ``[[edit.facts]]`` table; the subject must occur in the prompt and in every paraphrase."""
    table = _check_keys(table, _FACT_KEYS, where)
    for key in ("prompt", "subject", "target_new"):
        if key not in table:
            raise InputError(where, f"missing key '{key}'")
    prompt, subject = _token_ids(table["prompt"], f"{where}.prompt"), _token_ids(table["subject"], f"{where}.subject")
    paraphrases = _prompt_list(table.get("paraphrases", []), f"{where}.paraphrases")
    for label, tokens in (("prompt", prompt), *((f"paraphrases[{i}]", p) for i, p in enumerate(paraphrases))):
        if subject_end(tokens, subject) is None:
            raise InputError(f"{where}.{label}", f"does not contain the subject's tokens {list(subject)}")
    new = _token_id(table["target_new"], f"{where}.target_new")
    true = _token_id(table["target_true"], f"{where}.target_true") if "target_true" in table else None
    if true == new:
        raise InputError(f"{where}.target_new", "is the same token as target_true: nothing to edit")
    return FactSpec(prompt, subject, new, true, paraphrases,
                    _prompt_list(table.get("unrelated", []), f"{where}.unrelated"))


def subject_end(tokens: tuple[int, ...], subject: tuple[int, ...]) -> int | None:
    """The position of the subject's last token in ``tokens`` (its last occurrence), or None."""
    n = len(subject)
    return next((i + n - 1 for i in range(len(tokens) - n, -1, -1) if tokens[i:i + n] == subject), None)


def _token_id(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InputError(where, f"must be a token id (an integer >= 0), not {value!r}")
    return value


def _token_ids(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise InputError(where, f"must be a non-empty list of token ids, not {value!r}")
    return tuple(_token_id(v, f"{where}[{i}]") for i, v in enumerate(value))


def _prompt_list(value: Any, where: str) -> tuple[tuple[int, ...], ...]:
    if not isinstance(value, list):
        raise InputError(where, f"must be a list of prompts (lists of token ids), not {value!r}")
    return tuple(_token_ids(v, f"{where}[{i}]") for i, v in enumerate(value))
