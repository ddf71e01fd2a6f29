"""The ``mechaudit`` command line. Exit codes as in ruff: 0 gate passes, 1 gate fails, 2 bad usage or input.

Start-up stays light: this module imports only click and the plain-data modules (spec, examples); torch, the
checks and the report writers are imported inside the command that needs them, so ``--help`` and shell
completion never load them (``tests/test_cli_habits.py`` checks it).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from dataclasses import replace
from pathlib import Path

import click

from . import __version__
from .errors import InputError
from .examples import EDIT_EXAMPLES, EXAMPLES, REAL_MODELS, example_spec
from .portable import portable_command
from .spec import AuditSpec, DataRef, DataSpec, ModelSpec, load_spec, pyproject_options, validate_options

EXIT_PASS, EXIT_FAIL, EXIT_ERROR = 0, 1, 2


def _csv(value: str | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(v.strip() for v in value.split(",") if v.strip())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mechaudit")
@click.option("--debug", is_flag=True, help="Show tracebacks as well as the one-line errors (anywhere on the line).")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Audit a PyTorch model with a rulebook of mechanistic-interpretability checks."""
    ctx.obj = {"debug": debug}


@cli.command()
@click.argument("spec", required=False, type=click.Path(path_type=Path))
@click.option("--example", help="Audit an embedded example instead of a spec (see `mechaudit examples`).")
@click.option("--model", "model_source", help="Quick run: a factory module:callable, a TorchScript/ONNX/pickle file.")
@click.option("--weights", type=click.Path(path_type=Path), help="Quick run: weights for the factory.")
@click.option("--data", type=click.Path(path_type=Path), help="Quick run: data file (.npz, .safetensors, .pt, .csv).")
@click.option("--inputs", "inputs_key", help="Quick run: key of the inputs in the data file [inputs].")
@click.option("--labels", "labels_key", help="Quick run: key of the labels in the data file [labels].")
@click.option("--mask", "masks", multiple=True, metavar="NAME=KEY", help="Quick run: a forbidden input region.")
@click.option("--task", type=click.Choice(["classification", "regression", "next-token"]), help="Quick run: the task.")
@click.option("--out", type=click.Path(path_type=Path), help="Directory for the reports (replaced atomically).")
@click.option("--format", "formats",
              help="Comma-separated: json, html, pdf, sarif, junit, github [json with --out]. Without --out, json "
                   "prints findings.json to stdout (the summary goes to stderr); github always prints to stdout.")
@click.option("--config", "config_file", type=click.Path(path_type=Path),
              help="Read [tool.mechaudit] from this file instead of the pyproject.toml found from the spec upward.")
@click.option("--isolated", is_flag=True, help="Ignore every pyproject.toml: the spec and flags only.")
@click.option("--sarif-keep-waived", is_flag=True,
              help="SARIF: keep waived findings as results with an accepted suppression [left out].")
@click.option("--pdf-variant", type=click.Choice(["pdf/a-3b", "pdf/ua-1"]),
              help="PDF: an archival (PDF/A-3b) or accessible (PDF/UA-1) variant, via WeasyPrint.")
@click.option("--fail-on", type=click.Choice(["info", "warning", "error", "never"]), help="Gate threshold [error].")
@click.option("--select", help="Rule ids or prefixes to run (comma-separated), e.g. D,L201.")
@click.option("--ignore", help="Rule ids or prefixes to skip.")
@click.option("--extend-select", help="Rule ids or prefixes to add to the selection.")
@click.option("--rulebook", help="Built-in rulebook name or path to a rulebook .toml [default].")
@click.option("--layers", help="Only audit these layers (comma-separated module paths).")
@click.option("--seed", type=int, help="Seed for every random source [0].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Where to run the model [auto].")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]),
              help="Precision of the model's forward passes; statistics stay float32 [float32].")
@click.option("--batch-size", type=int, help="Samples per forward pass [256; lowered to fit CUDA memory].")
@click.option("--max-samples", type=int, help="Cap on samples used by per-sample analyses [2048].")
@click.option("--rule-timeout", type=int, help="Seconds a rule may run before it becomes an error (0: none) [600].")
@click.option("--max-file-mb", type=int, help="Refuse input files larger than this many MiB [4096].")
@click.option("--trust-pickle", is_flag=True, default=None, help="Allow loading a fully pickled model (runs code).")
@click.option("--waivers", type=click.Path(path_type=Path), help="Waiver file (TOML) for known, accepted failures.")
@click.option("--baseline", type=click.Path(path_type=Path), help="Report changes since this findings.json or bundle.")
@click.option("--tolerance", help="With --baseline: metric rise tolerated, e.g. 0.02 or flip_rate=0.02,default=0.")
@click.option("--plan", "plan_only", is_flag=True,
              help="Print the plan (each rule's estimated forward/backward passes, memory and seconds, and what the "
                   "budgets reduce or refuse) and exit 0 without running any rule.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar, no summary.")
@click.option("--verbose", "-v", is_flag=True, help="Print the plan before running; list passing findings too.")
@click.pass_context
def audit(ctx: click.Context, spec: Path | None, example: str | None, model_source: str | None,
          weights: Path | None, data: Path | None, inputs_key: str | None, labels_key: str | None,
          masks: tuple[str, ...], task: str | None, out: Path | None, formats: str | None, config_file: Path | None,
          isolated: bool, sarif_keep_waived: bool, pdf_variant: str | None, plan_only: bool, quiet: bool,
          verbose: bool, **flags) -> None:
    """Run the rulebook on a model and its audit data (a SPEC file, --example NAME, or quick-run flags).

    Before the rules run, each rule's cost is estimated (forward and backward passes, memory, seconds on this
    machine); a rule that would exceed --rule-timeout or the free memory runs reduced (its findings say so) or is
    refused with an error finding. --plan prints that plan and stops; -v prints it, then runs."""
    from .engine import plan_audit, run_audit
    from .output import check_out_dir, write_bundle
    from .report import FORMATS, ReportSettings, build_bundle, check_formats
    from .report.console import summary_lines
    from .rulebook import load_rulebook

    baseline, tolerance = flags.pop("baseline"), flags.pop("tolerance")
    chosen = _csv(formats) or (("json",) if out is not None else ())
    unknown = [f for f in chosen if f not in FORMATS]
    if unknown:
        raise InputError(f"--format {unknown[0]}", f"unknown format (available: {', '.join(FORMATS)})")
    if out is None and set(chosen) - {"json", "github"}:
        raise InputError("--format", "needs --out DIR to write reports into")
    json_to_stdout = out is None and "json" in chosen
    if json_to_stdout and "github" in chosen:
        raise InputError("--format json,github", "both print to stdout without --out; give --out DIR")
    check_formats(chosen)  # e.g. pdf without WeasyPrint: one line, before the audit runs
    if isolated and config_file is not None:
        raise InputError("--isolated", "ignores every configuration file; it does not combine with --config")
    if out is not None:
        check_out_dir(out, spec)  # never replaced unless empty, absent or a previous report; writable
    old = _load_baseline(baseline)  # a bad baseline fails before the audit runs
    base = _base_options(spec, config_file, isolated)
    audit_spec = _spec_from(spec, example, model_source, weights, data, inputs_key, labels_key, masks, task, flags,
                            base)
    rulebook = load_rulebook(audit_spec.options.rulebook)
    if plan_only:
        plan = plan_audit(audit_spec, rulebook)
        for line in plan.lines() if _main_rank() else []:
            click.echo(line)
        ctx.exit(EXIT_PASS)
    command = "mechaudit " + portable_command(sys.argv[1:], Path.cwd())
    result = run_audit(audit_spec, rulebook, progress=not quiet and sys.stderr.isatty() and not os.environ.get("CI"),
                       command=command, baseline=baseline, on_plan=_echo_plan if verbose and not quiet else None)
    if not _main_rank():  # under torchrun, rank 0 alone writes the bundle and prints
        ctx.exit(EXIT_FAIL if result.gate_failed else EXIT_PASS)
    if old is not None:
        result.baseline = _baseline_diff(old, result, baseline, audit_spec.options.tolerance, tolerance)
    if out is not None:
        settings = ReportSettings(sarif_keep_waived=sarif_keep_waived, pdf_variant=pdf_variant, bundle_dir=out,
                                  project_root=result.project_root)
        write_bundle(out, build_bundle(result, chosen, settings), spec)
    if not quiet:  # machine output owns stdout: the summary goes to stderr then
        for line in summary_lines(result, verbose):
            click.echo(line, err=json_to_stdout)
    if json_to_stdout:
        from .report.json_report import render_json

        click.echo(render_json(result), nl=False)
    if "github" in chosen:  # workflow commands: the Actions runner reads them from stdout
        from .report.github import render_github, write_step_summary

        click.echo(render_github(result), nl=False)
        write_step_summary(result)
    ctx.exit(EXIT_FAIL if result.gate_failed else EXIT_PASS)


def _echo_plan(plan) -> None:
    """``-v``: the plan on stderr, before the rules run (stdout may carry findings.json)."""
    for line in plan.lines():
        click.echo(line, err=True)


def _base_options(spec: Path | None, config_file: Path | None, isolated: bool):
    """The configuration under the spec: ``--config FILE``, none with ``--isolated``, else the nearest
    ``pyproject.toml`` from the spec's directory upward (from the working directory without a spec), as in ruff."""
    from .config import config_file_options
    from .spec import Options

    if isolated:
        return Options()
    if config_file is not None:
        return config_file_options(config_file)
    return pyproject_options(spec.resolve().parent if spec is not None else Path.cwd())


def _load_baseline(path: Path | None):
    from .diff import load_result

    return load_result(path) if path is not None else None


def _baseline_diff(old: dict, result, path: Path, configured: tuple, flag: str | None) -> dict:
    from .config import parse_tolerance_flag
    from .diff import diff_results
    from .report.json_report import result_to_dict

    tolerance = {**dict(configured), **(parse_tolerance_flag(flag) if flag else {})}
    return diff_results(old, result_to_dict(result), tolerance, old_label=str(path), new_label="this audit")


def _spec_from(spec: Path | None, example: str | None, model_source: str | None, weights: Path | None,
               data: Path | None, inputs_key: str | None, labels_key: str | None, masks: tuple[str, ...],
               task: str | None, flags: dict, base=None) -> AuditSpec:
    sources = [name for name, given in (("SPEC", spec), ("--example", example), ("--model", model_source)) if given]
    if len(sources) != 1:
        raise InputError("audit", "give exactly one of SPEC, --example NAME or --model (with --data)")
    if base is None:
        base = _base_options(spec, None, False)
    if spec is not None or example is not None:
        path = spec if spec is not None else example_spec(example)
        audit_spec = load_spec(path, base)
        if any(v is not None for v in (weights, data, inputs_key, labels_key, task)) or masks:
            raise InputError("audit", "quick-run flags (--weights, --data, ...) do not combine with a spec")
    else:
        audit_spec = _quick_spec(model_source, weights, data, inputs_key, labels_key, masks, task, base)
    overrides = {key: value for key, value in flags.items() if value is not None}
    if "waivers" in overrides:  # relative to the working directory, like every path on the command line
        overrides["waivers"] = str(Path(overrides["waivers"]).resolve())
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

        kind = "onnx" if path.suffix.lower() == ".onnx" else (
            "torchscript" if path.is_file() and _is_torchscript(path) else "pickle")
        model = ModelSpec(name=path.stem, **{kind: path})
    mask_refs = {}
    for item in masks:
        name, sep, key = item.partition("=")
        if not sep or not name or not key:
            raise InputError(f"--mask {item}", "expected NAME=KEY")
        mask_refs[name] = DataRef(data.resolve(), key)
    data_spec = DataSpec(file=data.resolve(), inputs=inputs_key, labels=labels_key, masks=mask_refs)
    return AuditSpec(model=model, data=data_spec, task=task or "classification", options=base)


_CONFIG_HELP = "A spec or pyproject.toml whose configuration applies [the pyproject.toml above the working directory]."


def _effective(rulebook: str | None, config: Path | None):
    """The configuration in effect: options, where they came from, the rulebook with overrides, selected ids."""
    from .config import effective_rulebook, load_options

    options, source = load_options(config)
    book = effective_rulebook(options, rulebook)
    selected = {r.id for r in book.select(options.select, options.ignore, options.extend_select)}
    return options, source, book, selected


@cli.command()
@click.option("--rulebook", help="Built-in name or path [the configuration's rulebook, else default].")
@click.option("--config", type=click.Path(path_type=Path), help=_CONFIG_HELP)
@click.option("--format", "fmt", type=click.Choice(["table", "json", "markdown"]), default="table",
              show_default=True, help="markdown: the README's rule table.")
def rules(rulebook: str | None, config: Path | None, fmt: str) -> None:
    """List the rules of a rulebook as the configuration sets them (severity, parameters, selection)."""
    from .config import override_sources
    from .rulebook import markdown_table

    options, source, book, selected = _effective(rulebook, config)
    sources = override_sources(options.rules)
    if fmt == "markdown":
        click.echo(markdown_table(list(book.rules.values())))
        return
    if fmt == "json":
        click.echo(json.dumps({"rulebook": book.name, "sha256": book.sha256, "config": source,
                               "fail_on": options.fail_on,
                               "rules": [{**r.describe(), "selected": r.id in selected,
                                          "overrides": sources.get(r.id, {})} for r in book.rules.values()]},
                              indent=2))
        return
    for rule in book.rules.values():
        marks = ("" if rule.id in selected else " [not selected]") + (" [configured]" if rule.id in sources else "")
        click.echo(f"{rule.id}  {rule.name:<26} {rule.severity:<8} {rule.family:<14} {rule.docs.summary}{marks}")


@cli.command()
@click.argument("rule_id")
@click.option("--rulebook", help="Built-in name or path [the configuration's rulebook, else default].")
@click.option("--config", type=click.Path(path_type=Path), help=_CONFIG_HELP)
def explain(rule_id: str, rulebook: str | None, config: Path | None) -> None:
    """Print a rule's documentation and effective parameters."""
    from .config import override_sources
    from .rulebook import allowed_values

    options, source, book, selected = _effective(rulebook, config)
    configured = override_sources(options.rules).get(rule_id.upper(), {})
    rule = book.rules.get(rule_id.upper())
    if rule is None:
        raise InputError(f"rule '{rule_id}'", f"not in rulebook '{book.name}' (see `mechaudit rules`)")
    docs = rule.docs
    click.echo(f"{rule.id} {rule.name} ({rule.family}, severity {rule.severity}, check {rule.check.name})")
    click.echo(f"rulebook {book.name}; configuration: {source}; "
               f"{'selected' if rule.id in selected else 'not selected'}"
               + (f"; severity set in {configured['severity']}" if "severity" in configured else "") + "\n")
    click.echo(f"{docs.summary}\n")
    for title, text in (("What it checks", docs.what), ("Why it matters", docs.why),
                        ("How it is measured", docs.how), ("How to fix it", docs.fix)):
        click.echo(f"## {title}\n{text}\n")
    click.echo("## Parameters")
    for item in rule.parameters():
        key, value = item["name"], item["value"]
        bounds = allowed_values(item)
        origin = (f"set in {configured[key]}" if key in configured else
                  f"set by rulebook {book.name}" if value != item["default"] else "default")
        click.echo(f"  {key} = {value!r}  ({origin}{'; ' + bounds if bounds else ''})"
                   + (f"\n      {item['doc']}" if item["doc"] else ""))
    click.echo(f"\n## Needs\n  {', '.join(rule.check.needs) or 'nothing beyond a model and inputs'}\n")
    click.echo("## References")
    for ref in docs.references:
        click.echo(f"  - {ref}")


@cli.command()
@click.argument("old", type=click.Path(path_type=Path))
@click.argument("new", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["text", "json", "html"]), default="text", show_default=True)
@click.option("--tolerance", help="Metric rise tolerated: 0.02, or flip_rate=0.02,default=0 [config, else 0].")
@click.option("--fail-on", type=click.Choice(["info", "warning", "error", "never"]),
              help="Gate for 'new failing finding' [NEW's fail_on].")
@click.option("--config", type=click.Path(path_type=Path), help=_CONFIG_HELP)
@click.option("--output", "-o", type=click.Path(path_type=Path), help="Write to this file instead of stdout.")
@click.pass_context
def diff(ctx: click.Context, old: Path, new: Path, fmt: str, tolerance: str | None, fail_on: str | None,
         config: Path | None, output: Path | None) -> None:
    """Compare two audits (findings.json files or bundles): exit 1 on a new failing finding or a regression."""
    from .config import load_options, parse_tolerance_flag
    from .diff import diff_lines, diff_results, load_result, render_diff_html

    options, _ = load_options(config)
    tolerances = {**dict(options.tolerance), **(parse_tolerance_flag(tolerance) if tolerance else {})}
    result = diff_results(load_result(old), load_result(new), tolerances, fail_on, str(old), str(new))
    drift = _representation_drift(old, new)
    if drift is not None:
        result["representation_drift"] = drift
    if fmt == "json":
        text = json.dumps(result, indent=2, ensure_ascii=False) + "\n"
    elif fmt == "html":
        text = render_diff_html(result)
    else:
        from .text_safety import terminal_safe

        text = "\n".join(terminal_safe(line) for line in diff_lines(result)) + "\n"
    if output is not None:
        from .output_file import is_diff_output, write_text_file

        write_text_file(output, text, "--output", "diff", is_diff_output)
    else:
        click.echo(text, nl=False)
    ctx.exit(EXIT_FAIL if result["verdict"] == "fail" else EXIT_PASS)


def _representation_drift(old: Path, new: Path) -> dict | None:
    """Layer-by-layer CKA/RSA between two bundles audited with D107 (informational: it does not change the diff's
    verdict), or None when either bundle holds no fingerprints."""
    from .checks.representation_drift import bundle_drift

    try:
        rows = bundle_drift(old, new)
    except ValueError as exc:
        return {"error": str(exc).splitlines()[0]}
    return None if rows is None else {"layers": rows}


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--model-card", "model_card", type=click.Path(path_type=Path), default=Path("README.md"),
              show_default=True, help="The model card to write or update.")
@click.option("--report-url", help="Where the full report lives [the bundle's path, relative to the card].")
def card(bundle: Path, model_card: Path, report_url: str | None) -> None:
    """Write the audit in BUNDLE into a model card: a delimited section and model-index metadata (idempotent)."""
    from .card import update_model_card

    changed = update_model_card(bundle, model_card, report_url)
    click.echo(f"{model_card}: {'updated' if changed else 'already up to date'}")


@cli.command()
@click.argument("spec", required=False, type=click.Path(path_type=Path))
@click.option("--example", help="Edit an embedded example's model.")
@click.option("--suppress", help="Comma-separated unit addresses to suppress (mean output).")
@click.option("--erase", metavar="REGION", help="A declared input region whose direction is erased (with --layer).")
@click.option("--rome", is_flag=True, help="Rewrite facts (the spec's [[edit.facts]], or --prompt ...) by a rank-one "
                                           "edit of the MLP layer causal tracing points to (ROME).")
@click.option("--layer", help="--erase: the Linear layer whose weights take the edit; --rome: the MLP output "
                              "projection to edit [the layer causal tracing picks].")
@click.option("--prompt", "fact_prompt", metavar="IDS", help="--rome: a fact's prompt, comma-separated token ids.")
@click.option("--subject", metavar="IDS", help="--rome: the subject's token ids in the prompt.")
@click.option("--target-new", type=int, metavar="ID", help="--rome: the attribute token to write.")
@click.option("--target-true", type=int, metavar="ID", help="--rome: the attribute it replaces [the prediction].")
@click.option("--paraphrase", multiple=True, metavar="IDS", help="--rome: a paraphrase of the prompt (repeatable).")
@click.option("--unrelated", multiple=True, metavar="IDS",
              help="--rome: a prompt that must keep its answer (repeatable) [audit prompts without the subject].")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Edited weights (.safetensors).")
def edit(spec: Path | None, example: str | None, suppress: str | None, erase: str | None, rome: bool,
         layer: str | None, out: Path, **fact) -> None:
    """Simulate an edit (suppress units, erase a region's direction at a layer, or rewrite facts with --rome):
    print before/after metrics and write the edited weights (a simulation, not a retrained model)."""
    from .edit_command import NOTICE, edit_model

    audit_spec = _spec_from(spec, example, None, None, None, None, None, (), None, {})
    _check_edit_outputs(out, rome)
    given = [k for k, v in fact.items() if v not in (None, ())]
    if rome:
        if suppress or erase:
            raise InputError("--rome", "does not combine with --suppress or --erase")
        _rome(audit_spec, out, layer, fact if given else None)
        return
    if given:
        raise InputError(f"--{given[0].replace('fact_', '').replace('_', '-')}", "goes with --rome")
    report = edit_model(audit_spec, out, list(_csv(suppress) or ()), erase, layer)
    click.echo(f"{NOTICE}: {report['edit']}")
    if "evaluated_samples" in report:
        click.echo(f"measured on {report['evaluated_samples']} held-out audit samples")
    for key in report["before"]:
        click.echo(f"{key}: {report['before'][key]:.4f} -> {report['after'][key]:.4f} (simulated), "
                   f"{report['after_weights'][key]:.4f} (the edited weights)")
    click.echo(f"wrote {out}")


def _check_edit_outputs(out: Path, rome: bool) -> None:
    """Refuse, before the edit runs, to replace a file that is not a previous ``mechaudit edit`` output."""
    from .output_file import check_output_file, is_edit_page, is_edit_weights

    check_output_file(out, "--out", "edit (edited weights)", is_edit_weights)
    if rome:
        check_output_file(out.with_suffix(".html"), "--out", "edit page", is_edit_page)


def _rome(audit_spec: AuditSpec, out: Path, layer: str | None, fact: dict | None) -> None:
    """``edit --rome``: the facts of the spec, or the one on the command line; before / after per fact."""
    from .edit_command import NOTICE, edit_facts_command
    from .fact_edit import summary_lines
    from .spec import EditSpec, parse_fact

    edit = audit_spec.edit or EditSpec()
    if fact is not None:
        missing = [o for o, k in (("--prompt", "fact_prompt"), ("--subject", "subject"), ("--target-new", "target_new"))
                   if fact[k] is None]
        if missing:
            raise InputError("--rome", f"a fact on the command line needs --prompt, --subject and --target-new "
                                       f"(missing {missing[0]})")
        table = {"prompt": _ids(fact["fact_prompt"], "--prompt"), "subject": _ids(fact["subject"], "--subject"),
                 "paraphrases": [_ids(p, "--paraphrase") for p in fact["paraphrase"]],
                 "unrelated": [_ids(p, "--unrelated") for p in fact["unrelated"]]}
        table.update({k: fact[k] for k in ("target_new", "target_true") if fact[k] is not None})
        edit = replace(edit, facts=(parse_fact(table, "command line"),))
    report = edit_facts_command(audit_spec, out, edit, layer)
    click.echo(f"{NOTICE}: {report['edit']}")
    for line in summary_lines(report["facts"]):
        click.echo(line)
    click.echo(f"wrote {out} and {report['page']}")


def _ids(text: str | None, option: str) -> list:
    """Comma-separated token ids (left as text where not integers, for parse_fact's message)."""
    if text is None:
        return []
    return [int(v) if v.strip().lstrip("-").isdigit() else v.strip() for v in text.split(",") if v.strip()]


@cli.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--no-inputs", is_flag=True, help="Do not re-hash the model and data files the manifest records.")
@click.pass_context
def verify(ctx: click.Context, directory: Path, no_inputs: bool) -> None:
    """Check a bundle (an audit's --out DIR) against its manifest.json: exit 0 intact, 1 on any mismatch."""
    from .verify import verify_bundle

    outcome = verify_bundle(directory, check_inputs=not no_inputs)
    for line in outcome.lines():
        click.echo(line)
    ctx.exit(EXIT_PASS if outcome.ok else EXIT_FAIL)


@cli.command()
def examples() -> None:
    """List the embedded examples."""
    for example in EXAMPLES.values():
        click.echo(f"{example.name:<16} {example.description}")
    click.echo("\nReal pretrained models (their weights come from a package):")
    for example in REAL_MODELS.values():
        click.echo(f"{example.name:<16} {example.description} Needs: {example.needs}")
    click.echo("\nModels to edit (mechaudit edit --example NAME):")
    for example in EDIT_EXAMPLES.values():
        click.echo(f"{example.name:<16} {example.description}")


def main(argv: list[str] | None = None) -> int:
    """Entry point: turns bad input into one line on stderr and exit code 2, never a traceback."""
    from .interrupts import install_handlers, restore_handlers

    previous = install_handlers()  # SIGINT -> 130, SIGTERM -> 143; a KeyboardInterrupt raised by a model is not one
    try:
        return _main(argv)
    finally:
        restore_handlers(previous)


def _main(argv: list[str] | None) -> int:
    from .interrupts import MESSAGE, interruption
    from .text_safety import terminal_safe

    argv, debug = _hoist_debug(list(sys.argv[1:] if argv is None else argv))
    try:
        code = cli.main(args=argv, prog_name="mechaudit", standalone_mode=False,
                        color=False if os.environ.get("NO_COLOR") else None)  # https://no-color.org
        return code if isinstance(code, int) else EXIT_PASS
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        _say(f"mechaudit: error: {terminal_safe(exc.format_message())}")
        return EXIT_ERROR
    except (click.exceptions.Abort, KeyboardInterrupt) as exc:
        _say(MESSAGE)
        signal_exit = interruption(exc)
        return signal_exit.exit_code if signal_exit is not None else 130
    except InputError as exc:
        if debug:
            traceback.print_exc()
        _say(f"mechaudit: error: {terminal_safe(str(exc))}")
        return EXIT_ERROR
    except SystemExit as exc:  # only a model's code calls sys.exit: never let it decide the exit code
        if debug:
            traceback.print_exc()
        _say(f"mechaudit: error: code run by the audit called sys.exit({terminal_safe(repr(exc.code))}); "
             "no output was written")
        return EXIT_ERROR
    except Exception as exc:  # a bug in mechaudit, not bad input: still one line (after the traceback with --debug)
        if debug:
            traceback.print_exc()
        first = str(exc).splitlines()[0] if str(exc) else ""
        _say(f"mechaudit: internal error: {type(exc).__name__}: {terminal_safe(first)} "
             "(rerun with --debug for details)")
        return EXIT_ERROR


def _main_rank() -> bool:
    """Whether this process prints and writes: always, except for ranks other than 0 under ``torchrun``."""
    return int(os.environ.get("WORLD_SIZE", "1")) <= 1 or os.environ.get("RANK", "0") == "0"


def _say(line: str) -> None:
    """One line on stderr, from rank 0 only (another rank's failure reaches rank 0 through the collectives)."""
    if _main_rank():
        click.echo(line, err=True)


def _hoist_debug(argv: list[str]) -> tuple[list[str], bool]:
    """``--debug`` is accepted anywhere before ``--``: moved to the group, where click reads it."""
    end = argv.index("--") if "--" in argv else len(argv)
    debug = "--debug" in argv[:end]
    if debug:
        argv = ["--debug", *(a for a in argv[:end] if a != "--debug"), *argv[end:]]
    return argv, debug


if __name__ == "__main__":
    sys.exit(main())
