#!/usr/bin/env bash
# The benchmarks on one NVIDIA GPU, offline: a randomly initialised model with Phi-2's architecture
# and size (2.7 B parameters; no download), QLoRA training tokens/s and peak GPU memory for the
# tutorial's recipe vs ours, and generation one-at-a-time vs batched. About 3-5 minutes on an H200.
#
#   bash benchmarks/gpu.sh [OUT_DIR]            # default benchmarks/results/gpu
#   SIZE=tiny-phi bash benchmarks/gpu.sh OUT    # a toy-size model: the CPU smoke test the tests run
#
# Env: MODEL (a model directory to use instead of building one), DATA (DialogSum JSONL dir, default ../shared/dialogsum), PYTHON (default .venv/bin/python),
# STEPS (optimizer steps per training arm, default 10), DIALOGUES (default 32), NEW_TOKENS (default 100),
# REPEATS (interleaved runs of each arm, default 3), TRAIN_ARMS (comma-separated training arms, default all).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/gpu}
SIZE=${SIZE:-phi2}
PY=${PYTHON:-.venv/bin/python}
DATA=${DATA:-../shared/dialogsum}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
mkdir -p "$OUT"
"$PY" -c 'import torch; print("device:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")' | tee "$OUT/device.txt"
MODEL=${MODEL:-}  # an existing model directory (scripts/gpu_check.sh passes the one it built); else one is built
if [ -z "$MODEL" ]; then
  MODEL="$OUT/model"
  "$PY" -m benchmarks.common random-model "$SIZE" "$MODEL" ${TOKENIZER:+"$TOKENIZER"}
fi
"$PY" -m benchmarks.bench_train --base "$MODEL" --data "$DATA" --steps "${STEPS:-10}" --eval-rows 8 --repeats "${REPEATS:-3}" \
  ${TRAIN_ARMS:+--arms "$TRAIN_ARMS"} --json "$OUT/train.json" | tee "$OUT/train.md"
"$PY" -m benchmarks.bench_generate --base "$MODEL" --adapter '' --data "$DATA" --dialogues "${DIALOGUES:-32}" --new-tokens "${NEW_TOKENS:-100}" --repeats "${REPEATS:-3}" \
  --json "$OUT/generate.json" | tee "$OUT/generate.md"
