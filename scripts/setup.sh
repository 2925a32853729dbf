#!/usr/bin/env bash
# Create .venv and install the project with its extras. Idempotent; safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first and pinned: the local 2.13.0 wheel is a CPU build; an unpinned torch would pull CUDA.
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[serve,train,dev]"
