#!/usr/bin/env bash
# Set up (only if needed: scripts/setup.sh skips an install whose stamp matches) and run the service on its
# embedded defaults: a private Redis, one worker and the REST gateway on http://127.0.0.1:8000, serving the demo
# encoder and land-cover head (artifacts/demo) unless ANYSAT_CHECKPOINT / --checkpoint name other weights.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec anysat serve "$@"
