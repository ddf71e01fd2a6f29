"""Regenerate the 'facts' example: ``python -m mechaudit.examples.facts.train``.

Writes ``facts.safetensors`` (the trained fact model) and ``audit_data.npz`` (``inputs``: the 72 prompts, 24
subjects in 3 phrasings, subject-major; ``labels``: their attribute tokens). Deterministic: fixed seed, one thread.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from .model import train

HERE = Path(__file__).resolve().parent


def main() -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    model, prompts, targets = train()
    with torch.no_grad():
        accuracy = float((model(prompts)[:, -1].argmax(-1) == targets).float().mean())
    print(f"next-token accuracy on the 72 fact prompts: {accuracy:.3f}")
    if accuracy < 1.0:
        raise SystemExit("the fact model did not learn every fact")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(HERE / "facts.safetensors"))
    np.savez_compressed(HERE / "audit_data.npz", inputs=prompts.numpy(), labels=targets.numpy())


if __name__ == "__main__":
    main()
