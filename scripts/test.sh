#!/usr/bin/env bash
# Set up (if needed) and run the checks CI runs: ruff, then the default pytest suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check .
python -m pytest -q "$@"
