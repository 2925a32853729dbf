#!/usr/bin/env bash
# Create .venv and install the project with its extras, only when needed: a finished install leaves a stamp
# (.venv/.anysat-setup) holding a hash of what decides it (pyproject.toml and this script); when the stamp matches
# and the project imports, nothing is installed (the check takes ~2 s, the reinstall it saves ~66 s). The install is
# editable, so code changes need no reinstall; dependency changes change pyproject.toml and so the hash.
# ANYSAT_SETUP_FORCE=1 reinstalls anyway. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STAMP=.venv/.anysat-setup

digest() {
  if command -v sha256sum >/dev/null; then sha256sum | cut -d' ' -f1; else shasum -a 256 | cut -d' ' -f1; fi
}
want=$(cat pyproject.toml scripts/setup.sh | digest)

if [ "${ANYSAT_SETUP_FORCE:-0}" != 1 ] && [ -x .venv/bin/python ] && [ -f "$STAMP" ] \
    && [ "$(cat "$STAMP")" = "$want" ] && .venv/bin/python -c "import anysat.cli, model, service, training" 2>/dev/null
then
  exit 0
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
rm -f "$STAMP"  # an interrupted install must not look finished
python -m pip install -q --upgrade pip
# torch first and pinned: the local 2.13.0 wheel is a CPU build; an unpinned torch would pull CUDA.
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[serve,train,dev,cpu]"
echo "$want" > "$STAMP"
