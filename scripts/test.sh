#!/usr/bin/env bash
# Set up (if needed: the venv, and the system programs some tests run) and run the checks CI runs: ruff, the import
# contracts, mypy, then the default pytest tier and the slow tier (docs/testing.md). Arguments go to both pytest
# runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/system-deps.sh
. .venv/bin/activate
ruff check .
lint-imports
mypy
python -m pytest -q "$@"
# The slow tier; exit 5 = no slow test among those the arguments picked, which is no failure.
rc=0
python -m pytest -q -m slow "$@" || rc=$?
[ "$rc" -eq 0 ] || [ "$rc" -eq 5 ] || exit "$rc"
