"""The ``mechaudit`` command line. Exit codes as in ruff: 0 gate passes, 1 gate fails, 2 bad usage or input."""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
from dataclasses import replace
from pathlib import Path

import click

from . import __version__
from .errors import InputError
from .examples import EXAMPLES, example_spec
from .rulebook import Rule, load_rulebook
from .spec import AuditSpec, DataRef, DataSpec, ModelSpec, load_spec, pyproject_options, validate_options

EXIT_PASS, EXIT_FAIL, EXIT_ERROR = 0, 1, 2


def _csv(value: str | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(v.strip() for v in value.split(",") if v.strip())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mechaudit")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Audit a PyTorch model with a rulebook of mechanistic-interpretability checks."""
    ctx.obj = {"debug": debug}


@cli.command()
@click.argument("spec", required=False, type=click.Path(path_type=Path))
@click.option("--example", help="Audit an embedded example instead of a spec (see `mechaudit examples`).")
@click.option("--model", "model_source", help="Quick run: a factory module:callable, or a TorchScript / pickle file.")
@click.option("--weights", type=click.Path(path_type=Path), help="Quick run: weights for the factory.")
@click.option("--data", type=click.Path(path_type=Path), help="Quick run: data file (.npz, .safetensors, .pt, .csv).")
@click.option("--inputs", "inputs_key", help="Quick run: key of the inputs in the data file [inputs].")
@click.option("--labels", "labels_key", help="Quick run: key of the labels in the data file [labels].")
@click.option("--mask", "masks", multiple=True, metavar="NAME=KEY", help="Quick run: a forbidden input region.")
@click.option("--task", type=click.Choice(["classification", "regression", "next-token"]), help="Quick run: the task.")
@click.option("--out", type=click.Path(path_type=Path), help="Directory for the reports (replaced atomically).")
@click.option("--format", "formats", default="json", show_default=True, help="Comma-separated: json, html.")
@click.option("--fail-on", type=click.Choice(["info", "warning", "error", "never"]), help="Gate threshold [error].")
@click.option("--select", help="Rule ids or prefixes to run (comma-separated), e.g. D,L201.")
@click.option("--ignore", help="Rule ids or prefixes to skip.")
@click.option("--extend-select", help="Rule ids or prefixes to add to the selection.")
@click.option("--rulebook", help="Built-in rulebook name or path to a rulebook .toml [default].")
@click.option("--layers", help="Only audit these layers (comma-separated module paths).")
@click.option("--seed", type=int, help="Seed for every random source [0].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Where to run the model [auto].")
@click.option("--batch-size", type=int, help="Samples per forward pass [256].")
@click.option("--max-samples", type=int, help="Cap on samples used by per-sample analyses [2048].")
@click.option("--trust-pickle", is_flag=True, default=None, help="Allow loading a fully pickled model (runs code).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar, no summary.")
@click.option("--verbose", "-v", is_flag=True, help="List passing findings too.")
@click.pass_context
def audit(ctx: click.Context, spec: Path | None, example: str | None, model_source: str | None,
          weights: Path | None, data: Path | None, inputs_key: str | None, labels_key: str | None,
          masks: tuple[str, ...], task: str | None, out: Path | None, formats: str, quiet: bool, verbose: bool,
          **flags) -> None:
    """Run the rulebook on a model and its audit data (a SPEC file, --example NAME, or quick-run flags)."""
    from .engine import run_audit
    from .output import write_bundle
    from .report import FORMATS, build_bundle
    from .report.console import summary_lines

    chosen = _csv(formats) or ()
    unknown = [f for f in chosen if f not in FORMATS]
    if unknown:
        raise InputError(f"--format {unknown[0]}", f"unknown format (available: {', '.join(FORMATS)})")
    if out is None and formats != "json":
        raise InputError("--format", "needs --out DIR to write reports into")
    audit_spec = _spec_from(spec, example, model_source, weights, data, inputs_key, labels_key, masks, task, flags)
    rulebook = load_rulebook(audit_spec.options.rulebook)
    command = "mechaudit " + shlex.join(sys.argv[1:])
    result = run_audit(audit_spec, rulebook, progress=not quiet and sys.stderr.isatty() and not os.environ.get("CI"),
                       command=command)
    if out is not None:
        write_bundle(out, build_bundle(result, chosen))
    if not quiet:
        for line in summary_lines(result, verbose):
            click.echo(line)
    ctx.exit(EXIT_FAIL if result.gate_failed else EXIT_PASS)


def _spec_from(spec: Path | None, example: str | None, model_source: str | None, weights: Path | None,
               data: Path | None, inputs_key: str | None, labels_key: str | None, masks: tuple[str, ...],
               task: str | None, flags: dict) -> AuditSpec:
    sources = [name for name, given in (("SPEC", spec), ("--example", example), ("--model", model_source)) if given]
    if len(sources) != 1:
        raise InputError("audit", "give exactly one of SPEC, --example NAME or --model (with --data)")
    base = pyproject_options(Path.cwd())
    if spec is not None or example is not None:
        path = spec if spec is not None else example_spec(example)
        audit_spec = load_spec(path, base)
        if any(v is not None for v in (weights, data, inputs_key, labels_key, task)) or masks:
            raise InputError("audit", "quick-run flags (--weights, --data, ...) do not combine with a spec")
    else:
        audit_spec = _quick_spec(model_source, weights, data, inputs_key, labels_key, masks, task, base)
    overrides = {key: value for key, value in flags.items() if value is not None}
    for key in ("select", "ignore", "extend_select", "layers"):
        if key in overrides:
            overrides[key] = _csv(overrides[key])
    options = validate_options(replace(audit_spec.options, **overrides), "command line")
    return replace(audit_spec, options=options)


def _quick_spec(model_source: str, weights: Path | None, data: Path | None, inputs_key: str | None,
                labels_key: str | None, masks: tuple[str, ...], task: str | None, base) -> AuditSpec:
    if data is None:
        raise InputError("--model", "a quick run also needs --data")
    if ":" in model_source and not Path(model_source).exists():
        model = ModelSpec(name=model_source, factory=model_source, weights=weights.resolve() if weights else None)
    else:
        if weights is not None:
            raise InputError("--weights", "goes with a factory --model module:callable")
        path = Path(model_source).resolve()
        from .loading.model import _is_torchscript

        kind = "torchscript" if path.is_file() and _is_torchscript(path) else "pickle"
        model = ModelSpec(name=path.stem, **{kind: path})
    mask_refs = {}
    for item in masks:
        name, sep, key = item.partition("=")
        if not sep or not name or not key:
            raise InputError(f"--mask {item}", "expected NAME=KEY")
        mask_refs[name] = DataRef(data.resolve(), key)
    data_spec = DataSpec(file=data.resolve(), inputs=inputs_key, labels=labels_key, masks=mask_refs)
    return AuditSpec(model=model, data=data_spec, task=task or "classification", options=base)


@cli.command()
@click.option("--rulebook", default="default", show_default=True, help="Built-in name or path.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def rules(rulebook: str, fmt: str) -> None:
    """List the rules of a rulebook."""
    book = load_rulebook(rulebook)
    if fmt == "json":
        click.echo(json.dumps({"rulebook": book.name, "sha256": book.sha256,
                               "rules": [_rule_json(r) for r in book.rules.values()]}, indent=2))
        return
    for rule in book.rules.values():
        click.echo(f"{rule.id}  {rule.name:<26} {rule.severity:<8} {rule.family:<14} {rule.docs.summary}")


def _rule_json(rule: Rule) -> dict:
    docs = {k: v for k, v in vars(rule.docs).items()}
    docs["references"] = list(rule.docs.references)
    return {"id": rule.id, "name": rule.name, "family": rule.family, "check": rule.check.name,
            "severity": rule.severity, "needs": list(rule.check.needs), "params": rule.params_dict(), "docs": docs}


@cli.command()
@click.argument("rule_id")
@click.option("--rulebook", default="default", show_default=True, help="Built-in name or path.")
def explain(rule_id: str, rulebook: str) -> None:
    """Print a rule's documentation and effective parameters."""
    book = load_rulebook(rulebook)
    rule = book.rules.get(rule_id.upper())
    if rule is None:
        raise InputError(f"rule '{rule_id}'", f"not in rulebook '{book.name}' (see `mechaudit rules`)")
    docs = rule.docs
    click.echo(f"{rule.id} {rule.name} ({rule.family}, severity {rule.severity}, check {rule.check.name})\n")
    click.echo(f"{docs.summary}\n")
    for title, text in (("What it checks", docs.what), ("Why it matters", docs.why),
                        ("How it is measured", docs.how), ("How to fix it", docs.fix)):
        click.echo(f"## {title}\n{text}\n")
    click.echo("## Parameters")
    for key, value in rule.params_dict().items():
        click.echo(f"  {key} = {value!r}")
    click.echo(f"\n## Needs\n  {', '.join(rule.check.needs) or 'nothing beyond a model and inputs'}\n")
    click.echo("## References")
    for ref in docs.references:
        click.echo(f"  - {ref}")


@cli.command()
def examples() -> None:
    """List the embedded examples."""
    for example in EXAMPLES.values():
        click.echo(f"{example.name:<16} {example.description}")


def main(argv: list[str] | None = None) -> int:
    """Entry point: turns bad input into one line on stderr and exit code 2, never a traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    signal.signal(signal.SIGTERM, _terminate)
    try:
        code = cli.main(args=argv, prog_name="mechaudit", standalone_mode=False)
        return code if isinstance(code, int) else EXIT_PASS
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        click.echo(f"mechaudit: error: {exc.format_message()}", err=True)
        return EXIT_ERROR
    except click.exceptions.Abort:
        click.echo("mechaudit: interrupted; no output was written", err=True)
        return 130
    except InputError as exc:
        if debug:
            raise
        click.echo(f"mechaudit: error: {exc}", err=True)
        return EXIT_ERROR
    except KeyboardInterrupt:
        click.echo("mechaudit: interrupted; no output was written", err=True)
        return 130
    except Exception as exc:  # a bug in mechaudit, not bad input: still one line
        if debug:
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        click.echo(f"mechaudit: internal error: {type(exc).__name__}: {first} (rerun with --debug for details)",
                   err=True)
        return EXIT_ERROR


def _terminate(signum, _frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    sys.exit(main())
