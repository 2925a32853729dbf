#!/usr/bin/env bash
# Set up (if needed) and run the main job available today: embed the real TreeSatAI-TS tile.
# Checkpoint: $ANYSAT_CHECKPOINT (official AnySat.pth or ours), else the official-format tiny
# reference checkpoint beside the repo (random weights: shapes and plumbing, not meaning).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
CKPT=${ANYSAT_CHECKPOINT:-../shared/fixtures/reference/anysat_tiny_seed0.pth}
python examples/treesatai_embeddings.py --checkpoint "$CKPT" "$@"
