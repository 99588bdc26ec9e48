#!/usr/bin/env bash
# The project's one test command, for a fresh Debian machine (run as root):
# installs what the tests need (idempotent, quick when already there), then
# runs pytest with any arguments passed through. Exit status = pytest's.
#
#   bash tests/run.sh                      # whole suite
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

# 2. The package and its test extra. Skipped when pyproject.toml is unchanged
#    since the last install here and every requirement is still satisfied.
mkdir -p build
stamp=build/.test-deps.stamp
want="$("$PY" -c 'import hashlib,sys; print(hashlib.sha256(open("pyproject.toml","rb").read()+sys.executable.encode()+sys.version.encode()).hexdigest())')"
deps_ok() {
    [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] || return 1
    "$PY" - <<'PYEOF'
import importlib.metadata as md, pathlib, sys
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
import ct2_magics
here = pathlib.Path.cwd().resolve()
if here not in pathlib.Path(ct2_magics.__file__).resolve().parents:
    sys.exit(f"ct2_magics imports from {ct2_magics.__file__}, not this checkout")
for line in md.requires("ct2-magics") or []:
    req = Requirement(line)
    if req.marker and not req.marker.evaluate({"extra": "test"}):
        continue
    try:
        have = md.version(req.name)
    except md.PackageNotFoundError:
        sys.exit(f"missing {req.name}")
    if req.specifier and not req.specifier.contains(have, prereleases=True):
        sys.exit(f"{req.name} {have} does not satisfy {req}")
PYEOF
}
if ! deps_ok 2>/dev/null; then
    log "pip install -e .[test]"
    "$PY" -m pip install -q --progress-bar off -e ".[test]"
    echo "$want" > "$stamp"
fi

# 3. torch (CPU wheel from this machine's local index) for the tests that
#    convert tiny transformers models.
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    log "pip install torch==2.13.0"
    "$PY" -m pip install -q --progress-bar off torch==2.13.0
fi

# 4. The tests.
exec "$PY" -m pytest -q "$@"
