#!/usr/bin/env bash
# The peers benchmark's harness with the peers really installed (CI runs this after the test suite): installs the
# [bench] extra (LitServe, Ray Serve) into .venv and runs tests/test_bench_peers.py, slow tier included, so every
# system's code path runs a few requests and cannot rot. The default test setup leaves [bench] out.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/setup.sh
. .venv/bin/activate
python -m pip install -q -e ".[serve,train,dev,cpu,bench]"
python -c "import litserve, ray.serve" # fail here, not in a skip, if the peers did not install
python -m pytest -q tests/test_bench_peers.py -m "slow or not slow"
