#!/usr/bin/env bash
# Prove the GPU path on one NVIDIA GPU, offline, in a few minutes (steps and options: scripts/gpu_check.py).
#   bash scripts/gpu_check.sh [OUT_DIR]                      # on a GPU: a 2.7 B random Phi-2, default gpu-check/
#   SIZE=tiny-phi BENCH=0 bash scripts/gpu_check.sh OUT      # the CPU smoke test (CI runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export PATH="$(cd "$(dirname "$PY")" && pwd):$PATH"  # the stages' `python` is this one
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DVC_NO_ANALYTICS=1
exec "$PY" scripts/gpu_check.py "$@"
