"""--dtype for the model's forward passes, batch sizes that fit the device, and the out-of-memory retry, reported."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch
from conftest import rulebook_with, write_project

from mechaudit.checks.registry import CHECKS, register
from mechaudit.engine import run_audit
from mechaudit.errors import InputError
from mechaudit.findings import Measurement
from mechaudit.memory import fitting_batch_size
from mechaudit.precision import cast_forward
from mechaudit.spec import Options, load_spec, validate_options


@dataclass(frozen=True)
class _NoParams:
    pass


@pytest.fixture(scope="module", autouse=True)
def planted_checks():
    """Checks that run out of memory (a simulated CUDA OOM) above a batch size of 128, or always."""
    @register("test_oom_above_128", _NoParams)
    def _oom_above(context, rule):
        if context.batch_size > 128:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [Measurement(f"ran at batch size {context.batch_size}")]

    @register("test_oom_always", _NoParams)
    def _oom_always(context, rule):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    @register("test_reads_tf32", _NoParams)
    def _reads_tf32(context, rule):
        return [Measurement(f"conv {torch.backends.cudnn.conv.fp32_precision}, "
                            f"matmul {torch.backends.cuda.matmul.fp32_precision}")]
    yield
    CHECKS.pop("test_oom_above_128")
    CHECKS.pop("test_oom_always")
    CHECKS.pop("test_reads_tf32")


def _audit(tmp_path: Path, checks: dict[str, str], **options):
    project = write_project(tmp_path, data_table='labels = "labels"')
    spec = load_spec(project.spec)
    if checks:  # the planted rules and one real one
        options["select"] = (*checks, "D101")
    spec = replace(spec, options=replace(spec.options, **options))
    return run_audit(spec, rulebook_with(tmp_path, checks))


def test_out_of_memory_is_retried_at_half_the_batch_and_reported(tmp_path: Path) -> None:
    result = _audit(tmp_path, {"D901": "test_oom_above_128"}, batch_size=256)
    run = next(r for r in result.rules if r.rule_id == "D901")
    assert run.status == "pass" and run.findings[0].message == "ran at batch size 128"
    assert run.findings[0].evidence["out_of_memory_retry"] == {
        "error": "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", "batch_size": 256,
        "retried_at": 128}
    assert run.reason == "retried at batch size 128 after running out of memory at 256"
    # control: a rule that fits reports no retry
    d101 = next(r for r in result.rules if r.rule_id == "D101")
    assert all("out_of_memory_retry" not in f.evidence for f in d101.findings) and d101.reason is None


def test_out_of_memory_twice_is_an_error_naming_the_retry(tmp_path: Path) -> None:
    result = _audit(tmp_path, {"D902": "test_oom_always"}, batch_size=64)
    run = next(r for r in result.rules if r.rule_id == "D902")
    assert run.status == "error"
    assert run.findings[0].message == ("ran out of memory (OutOfMemoryError; retried at batch size 32 after running "
                                       "out of memory at 64); lower --batch-size or --max-samples")


def test_float32_audits_run_without_tensorfloat32_and_restore_the_flags(tmp_path: Path) -> None:
    before = torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = "tf32"  # a user's setting: TF32 for matrix products too
    try:
        result = _audit(tmp_path, {"D903": "test_reads_tf32"})
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"  # restored after the audit
    finally:
        torch.backends.cuda.matmul.fp32_precision = before[1]
    assert next(f for f in result.findings if f.rule_id == "D903").message == "conv ieee, matmul ieee"
    assert torch.backends.cudnn.conv.fp32_precision == before[0] == "tf32"  # cuDNN's default, restored


def test_batch_size_fits_the_free_memory() -> None:
    gib = 2**30
    assert fitting_batch_size(256, 8 * gib, per_sample_bytes=4 * 2**20) == 256  # 2 GiB share / 4 MiB = 512 > 256
    assert fitting_batch_size(256, 8 * gib, per_sample_bytes=32 * 2**20) == 64
    assert fitting_batch_size(256, 2**20, per_sample_bytes=gib) == 1  # never below one sample
    assert fitting_batch_size(256, 8 * gib, per_sample_bytes=0) == 256


def test_cast_forward_runs_in_bfloat16_and_returns_float32() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    inputs = torch.randn(5, 4)
    expected = model(inputs)
    seen = []
    model[1].register_forward_hook(lambda _m, _a, out: seen.append(out.dtype))
    cast = cast_forward(model, "bfloat16")
    output = cast(inputs)
    assert seen == [torch.bfloat16] and output.dtype == torch.float32 and cast[0].weight.dtype == torch.bfloat16
    assert torch.allclose(output, expected, atol=0.05) and not torch.equal(output, expected)
    assert cast_forward(cast, "bfloat16") is cast and len(cast._forward_hooks) == 1  # not cast twice


def test_dtype_option_is_validated() -> None:
    with pytest.raises(InputError, match="dtype: 'float64' is not one of float32, bfloat16, float16"):
        validate_options(replace(Options(), dtype="float64"))




@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_audit_in_half_precision_on_cpu_keeps_statuses(tmp_path: Path, dtype: str) -> None:
    full = _audit(tmp_path / "full", {})
    half = _audit(tmp_path / "half", {}, dtype=dtype)
    assert [(f.rule_id, f.status) for f in half.findings] == [(f.rule_id, f.status) for f in full.findings]
    assert half.metadata["dtype"] == dtype and full.metadata["dtype"] == "float32"
    values = [(a.value, b.value) for a, b in zip(full.findings, half.findings) if a.value is not None]
    assert values and any(a != b for a, b in values)  # the forward passes really ran in the lower precision


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: measures the free memory of a GPU")
def test_batch_size_adapts_to_cuda_memory(tmp_path: Path) -> None:
    # 10**6 samples of this toy fit an H200's quarter of 139 GiB (the batch was not lowered); 10**9 fit no GPU
    result = _audit(tmp_path, {}, device="cuda", batch_size=10**9)
    assert result.metadata["batch_size"]["used"] < 10**9


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: compares CUDA findings with the CPU's")
def test_cuda_findings_have_the_cpu_statuses() -> None:
    from mechaudit.examples import EXAMPLES

    spec = load_spec(EXAMPLES["digits"].spec)
    results = [run_audit(replace(spec, options=replace(spec.options, device=device))) for device in ("cpu", "cuda")]
    assert [(f.rule_id, f.status) for f in results[1].findings] == [(f.rule_id, f.status) for f in results[0].findings]


@pytest.mark.slow
def test_circuit_rules_run_in_bfloat16_on_a_cnn_with_input_regions() -> None:
    """A bfloat16 CNN's float32 input regions and a float32 behaviour's gradients meet its bfloat16 weights in the
    edge scores (R301's input edges, R303's weight edges): they ran into a dtype error before."""
    from mechaudit.examples import EXAMPLES

    spec = load_spec(EXAMPLES["digits"].spec)
    runs = [run_audit(replace(spec, options=replace(spec.options, select=("R301", "R303"), dtype=dtype)))
            for dtype in ("float32", "bfloat16")]
    assert not [f.message for f in runs[1].findings if f.status == "error"]
    assert [(f.rule_id, f.status) for f in runs[1].findings] == [(f.rule_id, f.status) for f in runs[0].findings]
