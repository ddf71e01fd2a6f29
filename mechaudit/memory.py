"""Batch sizes that fit the device, and the out-of-memory retry of one rule, reported in its findings."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .errors import first_line
from .findings import Finding

#: Share of the free device memory one batch's forward activations may take: attributions and scans hold
#: gradients and several copies of a batch, so the forward pass alone gets a quarter.
MEMORY_SHARE = 0.25


def fitting_batch_size(requested: int, free_bytes: int, per_sample_bytes: float, share: float = MEMORY_SHARE) -> int:
    """The largest batch size up to ``requested`` whose activations take at most ``share`` of ``free_bytes``."""
    if per_sample_bytes <= 0:
        return requested
    return max(1, min(requested, int(free_bytes * share / per_sample_bytes)))


def batch_size_for(model: nn.Module, sample: torch.Tensor, device: torch.device, requested: int) -> int:
    """``requested``, lowered on CUDA to what the free memory holds (measured: the peak memory of a forward pass
    on ``sample``, per sample, against ``torch.cuda.mem_get_info``); unchanged on other devices."""
    if device.type != "cuda" or len(sample) == 0:
        return requested
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    with torch.no_grad():
        model(sample.to(device))
    per_sample = (torch.cuda.max_memory_allocated(device) - before) / len(sample)
    free, _total = torch.cuda.mem_get_info(device)
    return fitting_batch_size(requested, free, per_sample)


def halve_batch(context: Any, exc: BaseException) -> dict:
    """Halve the audit's batch size after ``exc`` (out of memory); what happened, for the rule's findings."""
    before = context.batch_size
    context.batch_size = max(1, before // 2)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    first = first_line(str(exc))
    return {"error": f"{type(exc).__name__}: {first}".rstrip(": "), "batch_size": before,
            "retried_at": context.batch_size}


def retried_note(retries: list[dict]) -> str:
    """``; retried at batch size N after running out of memory at M`` (empty without a retry)."""
    return "".join(f"; retried at batch size {r['retried_at']} after running out of memory at {r['batch_size']}"
                   for r in retries)


def report_retries(findings: list[Finding], retries: list[dict]) -> list[Finding]:
    """Record the retry in every finding's evidence (``out_of_memory_retry``), so a report shows it."""
    for finding in findings:
        if retries:
            finding.evidence["out_of_memory_retry"] = retries[-1]
    return findings
