"""The ground-truth benchmark: planted models and control twins for every rule family, audited through
``mechaudit.audit`` and scored against a truth computed from each model itself; prints one table.

    python benchmarks/ground_truth/run.py                    # every family
    python benchmarks/ground_truth/run.py --quick            # the reduced subset the slow test runs
    python benchmarks/ground_truth/run.py --markdown docs/ground_truth.md   # also rewrites the table there

How each truth is computed: docs/ground_truth.md and each family module's docstring.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
for folder in (REPO, REPO / "tests"):  # the planted fixtures live in tests/fixtures
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from benchmarks.ground_truth.table import Row, markdown_table, text_table  # noqa: E402

BEGIN, END = "<!-- ground-truth table: begin -->", "<!-- ground-truth table: end -->"


def families() -> dict[str, Callable[..., list[Row]]]:
    from benchmarks.ground_truth import (
        heads,
        image_shortcut,
        mlp_path,
        modular_addition,
        protected_leak,
        superposition,
        tracr_program,
    )

    return {"mlp_path": mlp_path.rows, "heads": heads.rows, "protected_leak": protected_leak.rows,
            "image_shortcut": image_shortcut.rows, "superposition": superposition.rows,
            "modular_addition": modular_addition.rows, "tracr": tracr_program.rows}


def run(names: list[str] | None = None, quick: bool = False, seed: int = 0, log=None) -> list[Row]:
    rows: list[Row] = []
    for name, family in families().items():
        if names and name not in names:
            continue
        started = time.perf_counter()
        rows += family(quick=quick, seed=seed)
        if log is not None:
            print(f"{name}: {time.perf_counter() - started:.1f} s", file=log)
    return rows


def write_markdown(path: Path, rows: list[Row]) -> None:
    """Replace the table between the markers in ``path`` (the whole file when it has none)."""
    table = markdown_table(rows)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = f"{head}{BEGIN}\n{table}\n{END}{rest.split(END, 1)[1]}"
    else:
        text = f"{text}{BEGIN}\n{table}\n{END}\n"
    path.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the reduced subset (smaller sweeps, fewer samples)")
    parser.add_argument("--family", action="append", choices=list(families()),
                        help="run only this family (repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", type=Path, help="write the table between the markers of this file")
    args = parser.parse_args(argv)
    if args.quick and args.markdown:
        parser.error("--markdown writes the documented table: run it without --quick")
    import torch

    torch.set_num_threads(2)
    rows = run(args.family, args.quick, args.seed, log=sys.stderr)
    print(text_table(rows))
    if args.markdown:
        write_markdown(args.markdown, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
