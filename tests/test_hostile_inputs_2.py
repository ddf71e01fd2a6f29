"""The hostile catalogue, second pass: data loss, gate bypass, code the user did not name, injection, silent wrong
results, unbounded work, unclear messages (issue 21; threat model in docs/robustness.md).

The promise kept by :func:`test_hostile_input`: 0 tracebacks, 0 partial outputs, 0 unwanted side effects. A
rejected case changes nothing anywhere under the test's directory (not even ``--out``, a previous report, or a
marker the model would write when loaded: the refusal comes before the audit); a completed case changes nothing
outside ``--out``. No temporaries are left behind in either case.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, read_findings, toy_arrays, write_project
from safetensors.torch import save_file
from test_hostile_inputs import Finding as Completes  # the audit completes; only --out changed
from test_hostile_inputs import Rejected  # exit 2, one line; here also: nothing changed anywhere

from mechaudit.cli import main

Case = Callable[[Path, pytest.MonkeyPatch], tuple[list, object]]
CASES: dict[str, Case] = {}


def case(function: Case) -> Case:
    CASES[function.__name__] = function
    return function


def _audit(p, *extra) -> list:
    return ["audit", p.spec, *extra]


def _previous_bundle(p, out: Path) -> None:
    assert main(["audit", str(p.spec), "--out", str(out), "--select", "D101", "--format", "json,sarif", "-q"]) == 0


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", ""])
    process.wait()
    return process.pid


# --- data loss: --out ------------------------------------------------------------------------------------------

@case
def out_empty_string(d: Path, monkeypatch: pytest.MonkeyPatch):
    p = write_project(d)
    monkeypatch.chdir(d)
    return _audit(p, "--out", ""), Rejected("is the working directory")


@case
def out_dot(d: Path, monkeypatch: pytest.MonkeyPatch):
    p = write_project(d)
    monkeypatch.chdir(d)
    return _audit(p, "--out", "."), Rejected("is the working directory")


@case
def out_parent_of_working_directory(d: Path, monkeypatch: pytest.MonkeyPatch):
    p = write_project(d)
    (d / "sub").mkdir()
    monkeypatch.chdir(d / "sub")
    return _audit(p, "--out", ".."), Rejected("contains the working directory")


@case
def out_holding_the_spec(d: Path, monkeypatch: pytest.MonkeyPatch):
    p = write_project(d / "work")
    return _audit(p, "--out", d / "work"), Rejected("holds the spec")


def _out_holding(d: Path, name: str, text: str) -> list:
    """Audit arguments whose ``--out`` is a directory holding one file ``name``."""
    p = write_project(d / "proj")
    (d / "out").mkdir()
    (d / "out" / name).write_text(text)
    return _audit(p, "--out", d / "out")


@case
def out_holding_other_files(d: Path, monkeypatch: pytest.MonkeyPatch):
    return _out_holding(d, "thesis.tex", "years of work"), Rejected(
        "not a previous mechaudit report ('thesis.tex' is there")


@case
def out_previous_bundle_with_an_added_file(d: Path, monkeypatch: pytest.MonkeyPatch):
    p = write_project(d / "proj")
    _previous_bundle(p, d / "out")
    (d / "out" / "notes.md").write_text("mine")
    return _audit(p, "--out", d / "out"), Rejected("'notes.md' is not listed in its manifest.json")


@case
def out_with_a_foreign_manifest(d: Path, monkeypatch: pytest.MonkeyPatch):
    return _out_holding(d, "manifest.json", '{"tool": {"name": "other"}, "files": {}}'), Rejected(
        "no manifest.json written by mechaudit")


@case
def out_with_a_manifest_that_is_not_json(d: Path, monkeypatch: pytest.MonkeyPatch):
    return _out_holding(d, "manifest.json", "[" * 100_000), Rejected("no manifest.json written by mechaudit")


@case
def out_is_a_file(d: Path, monkeypatch: pytest.MonkeyPatch):
    p = write_project(d / "proj")
    (d / "out").write_text("a file")
    return _audit(p, "--out", d / "out"), Rejected("exists and is not a directory")


@case
def out_is_a_mount_point(d: Path, monkeypatch: pytest.MonkeyPatch):
    p = write_project(d / "proj")
    (d / "mnt").mkdir()
    real = os.path.ismount
    monkeypatch.setattr("mechaudit.output.os.path.ismount", lambda path: Path(path) == d / "mnt" or real(path))
    return _audit(p, "--out", d / "mnt"), Rejected("is a mount point")


def _failing(error: int, text: str) -> Callable:
    def fail(*_args, **_kwargs):
        raise OSError(error, text)
    return fail


def _marking_project(d: Path):
    """A project whose model leaves a file when loaded (the harness then sees whether the audit started)."""
    return write_project(d / "proj", factory="fixtures.hostile_models:marking",
                         factory_args={"marker": str(d / "proj" / "loaded")})


@case
def out_not_writable_named_before_the_audit(d: Path, monkeypatch: pytest.MonkeyPatch):
    p = _marking_project(d)
    monkeypatch.setattr("mechaudit.output.tempfile.mkdtemp", _failing(errno.EACCES, "Permission denied"))
    return _audit(p, "--out", d / "out"), Rejected("--out")


@case
def out_disk_full_named_before_the_audit(d: Path, monkeypatch: pytest.MonkeyPatch):
    p = _marking_project(d)
    monkeypatch.setattr("mechaudit.output.os.fsync", _failing(errno.ENOSPC, "No space left on device"))
    return _audit(p, "--out", d / "out"), Rejected("No space left on device")


@case
def out_disk_full_while_writing_keeps_the_previous_report(d: Path, monkeypatch: pytest.MonkeyPatch):
    p = write_project(d / "proj")
    _previous_bundle(p, d / "out")
    real = pathlib.Path.write_bytes

    def full(self, data):
        if ".out.tmp-" in str(self):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)
    monkeypatch.setattr(pathlib.Path, "write_bytes", full)
    return _audit(p, "--out", d / "out", "--select", "D101"), Rejected("the disk is full")


@case
def out_empty_directory_is_accepted(d: Path, monkeypatch: pytest.MonkeyPatch):
    p = write_project(d / "proj")
    (d / "out").mkdir()
    return _audit(p, "--out", d / "out", "--select", "D101"), Completes("D101", "pass", "never activate")


@case
def out_previous_bundle_is_replaced(d: Path, monkeypatch: pytest.MonkeyPatch):
    p = write_project(d / "proj")
    _previous_bundle(p, d / "out")
    return _audit(p, "--out", d / "out", "--select", "D101", "--format", "json,junit"), Completes(
        "D101", "pass", "never activate")


@case
def stale_temporaries_of_dead_runs_are_cleaned(d: Path, monkeypatch: pytest.MonkeyPatch):
    p = write_project(d / "proj")
    dead = _dead_pid()
    (d / f".out.tmp-{dead}-abc").mkdir(parents=True)
    (d / f".out.tmp-{dead}-abc" / "findings.json").write_text("{}")
    (d / f".out.old-{dead}-xyz" / "previous").mkdir(parents=True)
    (d / ".out.tmp-legacy").mkdir()
    hours_ago = time.time() - 7200
    os.utime(d / ".out.tmp-legacy", (hours_ago, hours_ago))
    (d / "out").mkdir()
    return _audit(p, "--out", d / "out", "--select", "D101"), Completes("D101", "pass", "never activate")


# --- gate bypass -----------------------------------------------------------------------------------------------

@case
def threshold_nan_in_rulebook(d: Path, monkeypatch: pytest.MonkeyPatch):
    d.mkdir(parents=True)
    (d / "book.toml").write_text('name = "book"\nselect = ["ALL"]\n[rules.D101.params]\nmax_dead_fraction = nan\n')
    return _audit(write_project(d), "--rulebook", d / "book.toml"), Rejected("nan is not a finite number")


@case
def threshold_nan_in_spec_override(d: Path, monkeypatch: pytest.MonkeyPatch):
    p = write_project(d, extra="[audit.rules.D101]\nmax_dead_fraction = nan")
    return _audit(p), Rejected("nan is not a finite number")


@case
def threshold_inf_in_spec_override(d: Path, monkeypatch: pytest.MonkeyPatch):
    p = write_project(d, extra="[audit.rules.D101]\nmax_dead_fraction = -inf")
    return _audit(p), Rejected("-inf is not a finite number")


@case
def model_calls_sys_exit_inside_a_rule(d: Path, monkeypatch: pytest.MonkeyPatch):
    p = write_project(d, factory="fixtures.hostile_models:exits_in_rule")
    return _audit(p, "--select", "L203"), Completes("L203", "error", "raised sys.exit(0)", code=1)


@case
def model_raises_keyboard_interrupt_inside_a_rule(d: Path, monkeypatch: pytest.MonkeyPatch):
    p = write_project(d, factory="fixtures.hostile_models:interrupts_in_rule")
    return _audit(p, "--select", "L203"), Completes("L203", "error", "raised KeyboardInterrupt", code=1)


@case
def model_calls_sys_exit_in_every_forward(d: Path, monkeypatch: pytest.MonkeyPatch):
    p = write_project(d, factory="fixtures.hostile_models:exits_in_forward")
    return _audit(p), Rejected("SystemExit")


@case
def factory_calls_sys_exit(d: Path, monkeypatch: pytest.MonkeyPatch):
    p = write_project(d, factory="fixtures.hostile_models:exiting_factory")
    return _audit(p), Rejected("SystemExit (it called sys.exit(0))")


# --- code the user did not name --------------------------------------------------------------------------------

@case
def module_beside_spec_with_an_installed_name(d: Path, monkeypatch: pytest.MonkeyPatch):
    p = write_project(d, factory="tqdm:build")
    (d / "tqdm.py").write_text("raise SystemExit('a module beside the spec ran')\n")
    return _audit(p), Rejected("has the name of the installed module")


@case
def module_beside_spec_is_imported(d: Path, monkeypatch: pytest.MonkeyPatch):
    name = "usermodel_" + hashlib.sha256(str(d).encode()).hexdigest()[:12]  # unique: a fresh import each run
    p = write_project(d, factory=f"{name}:build")
    (d / f"{name}.py").write_text("from fixtures.toy_models import signal_mlp\n\n\ndef build():\n"
                                  "    return signal_mlp()\n")
    return _audit(p, "--select", "D101"), Completes("D101", "pass", "never activate")


@case
def rulebook_path_leaves_the_project(d: Path, monkeypatch: pytest.MonkeyPatch):
    from mechaudit.resources import rulebook_path
    d.mkdir(parents=True)
    (d / "book.toml").write_text(rulebook_path("default").read_text())
    p = write_project(d / "proj", extra='[audit]\nrulebook = "../book.toml"')
    (p.dir / "pyproject.toml").write_text("")
    return _audit(p), Rejected("leaves the project directory")


@case
def rulebook_path_inside_the_project_is_relative_to_the_spec(d: Path, monkeypatch: pytest.MonkeyPatch):
    from mechaudit.resources import rulebook_path
    p = write_project(d, extra='[audit]\nrulebook = "rules/book.toml"')
    (d / "rules").mkdir()
    (d / "rules" / "book.toml").write_text(rulebook_path("default").read_text())
    monkeypatch.chdir(d.parent)  # not the spec's folder: the path is the spec's, not the working directory's
    return _audit(p, "--select", "D101"), Completes("D101", "pass", "never activate")


@case
def tokenizer_subdir_leaves_the_package(d: Path, monkeypatch: pytest.MonkeyPatch):
    d.mkdir(parents=True)
    (d / "prompts.jsonl").write_text('{"inputs": "a"}\n')
    p = write_project(d, model_table='factory = "fixtures.toy_models:mlp"')
    p.spec.write_text(p.spec.read_text().replace(
        'file = "data.npz"', 'file = "prompts.jsonl"\ntokenizer = { package = "mechaudit", subdir = "../.." }'))
    return _audit(p), Rejected("leaves the package directory")


def _pickle_that_writes(d: Path) -> Path:
    """A pickle that, if ever unpickled, creates ``d / 'pwned'``."""

    class Payload:
        def __reduce__(self):
            return (Path.write_text, (d / "pwned", "ran"))
    d.mkdir(parents=True, exist_ok=True)
    torch.save({"x": Payload()}, d / "model.pt")
    return d / "model.pt"


@case
def factory_args_weights_only_false_without_trust_pickle(d: Path, monkeypatch: pytest.MonkeyPatch):
    _pickle_that_writes(d)
    p = write_project(d, model_table=f'factory = "torch:load"\nfactory_args = {{ f = "{d / "model.pt"}", '
                                     'weights_only = false }')
    return _audit(p), Rejected("weights_only = false lets the factory unpickle")


@case
def factory_args_allow_pickle_without_trust_pickle(d: Path, monkeypatch: pytest.MonkeyPatch):
    p = write_project(d, model_table='factory = "numpy:load"\nfactory_args = { file = "x.npy", allow_pickle = true }')
    return _audit(p), Rejected("--trust-pickle")


@case
def factory_args_weights_only_false_with_trust_pickle(d: Path, monkeypatch: pytest.MonkeyPatch):
    from fixtures.toy_models import signal_mlp
    d.mkdir(parents=True)
    torch.save(signal_mlp(), d / "model.pt")
    p = write_project(d, model_table=f'factory = "torch:load"\nfactory_args = {{ f = "{d / "model.pt"}", '
                                     'weights_only = false }')
    return _audit(p, "--trust-pickle", "--select", "D101"), Completes("D101", "pass", "never activate")


# --- injection -------------------------------------------------------------------------------------------------

@case
def data_keys_with_terminal_escapes(d: Path, monkeypatch: pytest.MonkeyPatch):
    arrays = {**toy_arrays(40), "\x1b]0;owned\x07\n::error::forged": np.zeros(40)}
    p = write_project(d, arrays=arrays, data_table='labels = "missing"')
    return _audit(p), Rejected("has no array 'missing'")


# --- silent wrong results --------------------------------------------------------------------------------------

@case
def csv_row_longer_than_header(d: Path, monkeypatch: pytest.MonkeyPatch):
    d.mkdir(parents=True)
    (d / "data.csv").write_text("a,b,c,d,labels\n1,2,3,4,0\n1,2,3,4,5,1\n")
    p = write_project(d)
    p.spec.write_text(p.spec.read_text().replace('"data.npz"', '"data.csv"'))
    return _audit(p), Rejected("data.csv:3: row has 6 fields, more than the header's 5")


@case
def csv_with_byte_order_mark_is_read(d: Path, monkeypatch: pytest.MonkeyPatch):
    d.mkdir(parents=True)
    arrays = toy_arrays(40)
    rows = ["labels,x0,x1,x2,x3"] + [f"{y}," + ",".join(f"{v:.6f}" for v in x)  # the BOM sits before 'labels'
                                     for x, y in zip(arrays["inputs"], arrays["labels"])]
    (d / "data.csv").write_text("\ufeff" + "\n".join(rows) + "\n", encoding="utf-8")
    p = write_project(d, data_table='labels = "labels"')
    p.spec.write_text(p.spec.read_text().replace('"data.npz"', '"data.csv"'))
    return _audit(p, "--select", "D101"), Completes("D101", "pass", "never activate")


@case
def model_returns_one_row_per_batch(d: Path, monkeypatch: pytest.MonkeyPatch):
    p = write_project(d, factory="fixtures.hostile_models:one_row_per_batch", arrays=toy_arrays(40))
    return _audit(p, "--batch-size", "16"), Rejected("returned 3 output rows for 40 samples")


# --- unbounded -------------------------------------------------------------------------------------------------

@case
def rule_timeout_not_swallowed_by_except_exception(d: Path, monkeypatch: pytest.MonkeyPatch):
    p = write_project(d, factory="fixtures.hostile_models:swallows_errors_in_rule")
    return _audit(p, "--select", "L203", "--rule-timeout", "1"), Completes(
        "L203", "error", "exceeded its time budget of 1 s", code=1)


@case
def factory_that_never_returns(d: Path, monkeypatch: pytest.MonkeyPatch):
    p = write_project(d, factory="fixtures.hostile_models:never_returns")
    return _audit(p, "--rule-timeout", "1"), Rejected("model: loading it: did not finish within --rule-timeout (1 s)")


@case
def forward_that_never_returns(d: Path, monkeypatch: pytest.MonkeyPatch):
    p = write_project(d, factory="fixtures.hostile_models:hangs_in_forward")
    return _audit(p, "--rule-timeout", "1"), Rejected("the first forward passes on the audit data: did not finish")


@case
def npz_that_inflates_past_the_limit(d: Path, monkeypatch: pytest.MonkeyPatch):
    arrays = {**toy_arrays(40), "padding": np.zeros(40 * 2**20 // 8)}  # 40 MiB of zeros, ~40 KiB compressed
    p = write_project(d)
    np.savez_compressed(d / "data.npz", **arrays)
    assert (d / "data.npz").stat().st_size < 2**20
    return _audit(p, "--max-file-mb", "1"), Rejected("unpacks to 40 MiB, above the limit of 1 MiB")


@case
def npy_header_declaring_more_than_it_holds(d: Path, monkeypatch: pytest.MonkeyPatch):
    p = write_project(d, arrays=toy_arrays(40))
    with zipfile.ZipFile(d / "data.npz", "a") as archive:
        header = np.lib.format.header_data_from_array_1_0(np.zeros(1))
        header["shape"] = (2**40,)
        with archive.open("huge.npy", "w") as member:
            np.lib.format.write_array_header_1_0(member, header)
            member.write(b"\0" * 64)
    return _audit(p), Rejected("array 'huge.npy' declares 8388608 MiB of data")


# --- unclear messages ------------------------------------------------------------------------------------------

@case
def spec_with_byte_order_mark(d: Path, monkeypatch: pytest.MonkeyPatch):
    p = write_project(d)
    p.spec.write_text("\ufeff" + p.spec.read_text(), encoding="utf-8")
    return _audit(p), Rejected("starts with a UTF-8 byte-order mark")


@case
def spec_nested_too_deeply(d: Path, monkeypatch: pytest.MonkeyPatch):
    p = write_project(d, extra="[scope]\nnotes = " + "[" * 20_000 + "]" * 20_000)
    return _audit(p), Rejected("not valid TOML (nested too deeply)")


@case
def baseline_nested_too_deeply(d: Path, monkeypatch: pytest.MonkeyPatch):
    p = write_project(d)
    (d / "baseline.json").write_text("[" * 100_000 + "]" * 100_000)
    return _audit(p, "--baseline", d / "baseline.json"), Rejected("not valid JSON (nested too deeply)")


@case
def waivers_nested_too_deeply(d: Path, monkeypatch: pytest.MonkeyPatch):
    p = write_project(d)
    (d / "waivers.toml").write_text("x = " + "{a = " * 20_000 + "1" + "}" * 20_000)
    return _audit(p, "--waivers", d / "waivers.toml"), Rejected("nested too deeply")


@case
def bfloat16_safetensors_data_is_read(d: Path, monkeypatch: pytest.MonkeyPatch):
    d.mkdir(parents=True)
    arrays = toy_arrays(40)
    save_file({"inputs": torch.from_numpy(arrays["inputs"]).bfloat16(),
               "labels": torch.from_numpy(arrays["labels"])}, d / "data.safetensors")
    p = write_project(d)
    p.spec.write_text(p.spec.read_text().replace('"data.npz"', '"data.safetensors"'))
    return _audit(p, "--select", "D101"), Completes("D101", "pass", "never activate")


@case
def values_beyond_float32_blamed_on_the_data(d: Path, monkeypatch: pytest.MonkeyPatch):
    arrays = toy_arrays(40)
    inputs = arrays["inputs"].astype(np.float64)
    inputs[3, 1] = 1e300
    p = write_project(d, arrays={**arrays, "inputs": inputs})
    return _audit(p), Rejected("inputs: holds values up to 1e+300, beyond the float32 range")


@case
def values_overflowing_the_model_blamed_on_the_data(d: Path, monkeypatch: pytest.MonkeyPatch):
    arrays = toy_arrays(40)
    arrays["inputs"][3, 0] = 1e20  # a float32 value; its square is not
    p = write_project(d, arrays=arrays, factory="fixtures.hostile_models:squares")
    return _audit(p), Rejected("data: inputs: reach |x| = 1e+20, and the model's outputs overflow")


# --- the promise -----------------------------------------------------------------------------------------------

def _tree(root: Path) -> dict[str, str | None]:
    """Every path under ``root`` (files by content digest, directories and links by kind), __pycache__ aside."""
    found: dict[str, str | None] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [name for name in dirs if name != "__pycache__"]
        for name in dirs + files:
            path = Path(folder) / name
            key = path.relative_to(root).as_posix()
            if path.is_symlink() or path.is_dir():
                found[key] = "link" if path.is_symlink() else None
            else:
                found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def test_catalogue_is_large_enough() -> None:
    assert len(CASES) >= 40


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_input(name: str, tmp_path: Path, cli, monkeypatch) -> None:
    args, expected = CASES[name](tmp_path / "case", monkeypatch)
    if "--out" not in args:
        args += ["--out", tmp_path / "out"]
    out = (Path.cwd() / Path(str(args[args.index("--out") + 1]))).resolve()
    before = _tree(tmp_path)
    result = cli(*args, "-q")
    after = _tree(tmp_path)
    for stream in (result.out, result.err):
        assert "Traceback" not in stream and "\x1b" not in stream and "\n::" not in "\n" + stream, stream
    leftovers = [key for key in after if any(f".{kind}-" in key for kind in ("tmp", "old"))]
    assert not leftovers, leftovers
    if isinstance(expected, Rejected):
        assert result.code == 2, (result.code, result.err)
        assert len(result.error_lines) == 1, result.err
        assert result.err.startswith("mechaudit: error: ") and expected.fragment in result.err, result.err
        assert after == before, sorted(set(after.items()) ^ set(before.items()))
    else:
        assert result.code == expected.code, (result.code, result.err)
        changed = {key for key in set(before) | set(after) if before.get(key, 0) != after.get(key, 0)}
        outside = [key for key in changed if not (tmp_path / key).resolve().is_relative_to(out)
                   and not any(part.startswith(".out.") for part in Path(key).parts)]  # stale temporaries, removed
        assert not outside, outside
        findings = [f for f in read_findings(out)["findings"] if f["rule_id"] == expected.rule_id]
        assert findings and all(f["status"] == expected.status for f in findings), findings
        assert any(expected.fragment in f["message"] for f in findings), findings


# --- beyond one command: reports, cards, verify, isolation, signals --------------------------------------------

_EVIL = "ok\n::error file=README.md,line=1::forged annotation\x1b[2J\x1b]0;owned\x07 \u202e"


def _waived_project(d: Path, approver: str = "QA") -> tuple:
    from fixtures.compliance import failing_project
    p = failing_project(d)
    waivers = d / "waivers.toml"
    waivers.write_text(f"[[waiver]]\nid = 'W-1'\nrule = 'L202'\njustification = {json.dumps(_EVIL)}\n"
                       f"approver = {json.dumps(approver)}\nexpires = 2999-01-01\n", encoding="utf-8")
    return p, waivers


def test_waiver_text_cannot_forge_workflow_commands_or_terminal_escapes(cli, tmp_path: Path) -> None:
    p, waivers = _waived_project(tmp_path / "proj")
    plain = cli("audit", p.spec, "--waivers", waivers, "--select", "L202", "-v")
    assert "W-1" in plain.out and "forged annotation" in plain.out  # shown, as text
    assert not [line for line in plain.out.splitlines() if line.lstrip().startswith("::")], plain.out
    assert "\x1b" not in plain.out and "\u202e" not in plain.out
    github = cli("audit", p.spec, "--waivers", waivers, "--select", "L202", "--format", "github", "-q")
    commands = [line for line in github.out.splitlines() if line.lstrip().startswith("::")]
    assert commands and all(line.startswith(("::error ", "::warning ", "::notice ")) for line in commands)
    assert not any("forged" in line.split("::")[1] for line in commands)  # never in a command's properties
    assert len(commands) == len(github.out.splitlines())


def test_approver_with_card_markers_does_not_break_later_card_runs(cli, tmp_path: Path) -> None:
    from mechaudit.card import BEGIN, END
    p, waivers = _waived_project(tmp_path / "proj", approver=f"{END}\n{BEGIN}\n<script>x</script> [a](javascript:1)")
    out, card = tmp_path / "out", tmp_path / "README.md"
    assert cli("audit", p.spec, "--waivers", waivers, "--select", "L202", "--out", out, "-q").code == 0
    for expected in ("updated", "already up to date"):
        result = cli("card", out, "--model-card", card)
        assert result.code == 0 and expected in result.out, result.err
    text = card.read_text()
    assert text.count(BEGIN) == 1 and text.count(END) == 1
    assert "<script>" not in text and "[a](javascript" not in text  # escaped: literal text, no tag, no link


def _bundle(tmp_path: Path, cli) -> Path:
    p = write_project(tmp_path / "proj")
    (p.dir / "pyproject.toml").write_text("")
    out = p.dir / "report"
    assert cli("audit", p.spec, "--out", out, "--select", "D101", "-q").code == 0
    return out


def _edit_manifest(out: Path, edit: Callable[[dict], None]) -> None:
    manifest = json.loads((out / "manifest.json").read_text())
    edit(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "statement.intoto.json").unlink(missing_ok=True)  # it names the manifest's old digest


def test_verify_reads_no_input_outside_the_project_root(cli, tmp_path: Path) -> None:
    out = _bundle(tmp_path, cli)
    (tmp_path / "outside.npz").write_bytes(b"secret")
    outside = {"/etc/passwd": "0" * 64, str(tmp_path / "outside.npz"): "0" * 64,
               str(tmp_path / "no-such-file"): "0" * 64, "../../outside.npz": "0" * 64}
    _edit_manifest(out, lambda m: m["inputs"]["data"].update(outside))
    result = cli("verify", out)
    assert result.code == 0, result.out  # the bundle's own files still match; the inputs outside are not read
    for name in outside:
        assert f"input outside the project root {out.parent.resolve()}, not re-hashed: {name}" in result.out
    assert "not reachable" not in result.out  # whether an outside file exists is not revealed
    assert "1 inputs re-hashed and unchanged" in result.out  # the real data file, inside the project


def test_verify_does_not_hash_inputs_above_the_size_cap(cli, tmp_path: Path, monkeypatch) -> None:
    out = _bundle(tmp_path, cli)
    monkeypatch.setattr("mechaudit.verify.MAX_INPUT_BYTES", 100)
    result = cli("verify", out)
    assert result.code == 0 and "input larger than 0 MiB, not re-hashed" in result.out, result.out


def test_verify_prints_manifest_names_escaped(cli, tmp_path: Path) -> None:
    out = _bundle(tmp_path, cli)
    _edit_manifest(out, lambda m: m["files"].update({"\x1b[2Jevil\n::error::x": "0" * 64}))
    result = cli("verify", out)
    assert result.code == 1 and "missing: \\x1b[2Jevil\\x0a::error::x" in result.out, result.out
    assert "\x1b" not in result.out


def _audit_api(model, arrays, **options):
    from mechaudit import audit
    return audit(model, torch.from_numpy(arrays["inputs"]), labels=torch.from_numpy(arrays["labels"]),
                 device="cpu", **options)


def test_model_working_in_place_on_its_input_does_not_rewrite_the_audit_data() -> None:
    from fixtures.hostile_models import in_place_on_input
    arrays = toy_arrays(40)
    probe = torch.from_numpy(arrays["inputs"].copy())
    in_place_on_input()(probe)
    assert not torch.equal(probe, torch.from_numpy(arrays["inputs"]))  # the plant: it does write in place
    inputs = torch.from_numpy(arrays["inputs"].copy())
    from mechaudit import audit
    audit(in_place_on_input(), inputs, labels=torch.from_numpy(arrays["labels"]), device="cpu",
          select=("D101", "L202"))
    assert torch.equal(inputs, torch.from_numpy(arrays["inputs"]))


def test_each_rule_starts_from_the_loaded_model_state() -> None:
    from fixtures.hostile_models import counting
    model = counting()
    result = _audit_api(model, toy_arrays(40), select=("D101", "L202", "D102"))
    forwarding = sum(1 for run in result.rules if run.status != "skipped")
    assert forwarding >= 2
    assert model.seen.count(0) >= forwarding + 1, model.seen  # the outputs check and every rule see calls == 0
    assert int(model.calls) == 0  # and the model is handed back as it was loaded


def test_jsonl_string_holding_a_raw_line_separator(tmp_path: Path) -> None:
    from mechaudit.loading.text import read_jsonl
    path = tmp_path / "p.jsonl"
    path.write_text('{"inputs": "a\u2028b", "labels": 1}\n{"inputs": "c\u2029d", "labels": 0}\n', encoding="utf-8")
    assert [r["inputs"] for r in read_jsonl(path)] == ["a\u2028b", "c\u2029d"]


def test_interrupted_swap_is_recovered_by_the_next_run(cli, tmp_path: Path) -> None:
    p = write_project(tmp_path / "proj")
    out = tmp_path / "out"
    _previous_bundle(p, out)
    previous = _tree(out)
    retired = tmp_path / f".out.old-{_dead_pid()}-abc"
    retired.mkdir()
    out.rename(retired / "previous")  # killed between the two renames of its swap
    (p.dir / "data.npz").unlink()
    result = cli("audit", p.spec, "--out", out, "-q")
    assert result.code == 2 and "data file not found" in result.err
    assert _tree(out) == previous and not retired.exists()


def test_temporaries_of_live_runs_are_kept(tmp_path: Path) -> None:
    from mechaudit.output import clean_stale
    live = tmp_path / ".out.tmp-1-abc"  # process 1 is always alive
    fresh_legacy = tmp_path / ".out.tmp-abc"
    live.mkdir()
    fresh_legacy.mkdir()
    clean_stale(tmp_path / "out")
    assert live.exists() and fresh_legacy.exists()


def test_a_signal_during_the_swap_waits_until_the_swap_is_done(tmp_path: Path, monkeypatch) -> None:
    from mechaudit import output
    out = tmp_path / "out"
    output.write_bundle(out, {"manifest.json": json.dumps({"tool": {"name": "mechaudit"}, "files": {"a": "0"}}),
                              "a": "old"})
    real = os.replace

    def interrupted(source, target):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C between the renames
        return real(source, target)
    monkeypatch.setattr(output.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        output.write_bundle(out, {"manifest.json": json.dumps({"tool": {"name": "mechaudit"}, "files": {"a": "1"}}),
                                  "a": "new"})
    assert (out / "a").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (Linux: the SigCgt mask in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads handler masks from /proc")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_start_up(tmp_path: Path, signum: int) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    process = subprocess.Popen([sys.executable, "-m", "mechaudit", "audit", str(tmp_path / "no-such-spec.toml")],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not _catches(process.pid, signal.SIGTERM) and time.time() < deadline:  # mechaudit's handlers are in
        time.sleep(0.005)
    process.send_signal(signum)  # still importing (torch alone takes a second): the spec was not even looked at
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signum, err
    assert err.strip() == "mechaudit: interrupted; no output was written"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_package_name_beside_the_spec_never_runs(tmp_path: Path) -> None:
    """``captum.py`` beside a spec whose factory lives elsewhere: the audit imports the real captum (for L203) in a
    fresh process, never the file beside the spec."""
    p = write_project(tmp_path / "proj")
    (p.dir / "captum.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    done = subprocess.run([sys.executable, "-m", "mechaudit", "audit", str(p.spec), "--select", "L203", "-q"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "ran").exists()
