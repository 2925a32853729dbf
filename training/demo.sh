#!/usr/bin/env bash
# Reproduce the demo artefacts (DEMO QUALITY — real work should start from the official weights):
#   artifacts/demo/encoder.safetensors         small AnySat pretrained on the sample tiles (CPU, minutes)
#   artifacts/demo/heads/landcover.safetensors land-cover head probed on the Landsat 8 polygons
# Usage: bash training/demo.sh   (from the repository root, with .venv active)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=build/demo
OUT=artifacts/demo
L8=examples/data/landsat8/LC08_224078_20200518_crop512.tif
POLY=examples/data/landsat8/LC08_L1TP_224078_20200518_20200518_01_RT_polygons.gpkg
mkdir -p "$BUILD" "$OUT/heads"

# 1. tile datasets from the real samples: the TreeSatAI-TS tile, the Landsat 8 crop cut into 240 m tiles
python - <<PY
from training.data import compute_stats, convert_treesatai, cut_tiles
from training.data.stats import write_stats
convert_treesatai("examples/data/treesatai-ts", "$BUILD/tsai", split="train", overwrite=True)
cut_tiles({"l8": [("$L8", "2020-05-18")]}, "$BUILD/l8", tile_size_m=240, bands={"l8": ["B2", "B3", "B4"]},
          name="landsat8-crop", overwrite=True)
write_stats(compute_stats("$BUILD/l8"), "$BUILD/l8/stats.json")
PY

# 2. pretraining (JEPA + contrastive, both datasets at once); the teacher becomes the encoder
rm -rf "$BUILD/pretrain"
python -m training.cli pretrain --config training/configs/demo_pretrain.json --out "$BUILD/pretrain"
cp "$BUILD/pretrain/encoder.safetensors" "$OUT/encoder.safetensors"
cp "$BUILD/pretrain/losses.csv" "$OUT/pretrain_losses.csv"

# 3. land-cover head from the polygons (frozen encoder, held-out tiles per class)
python -m training.cli probe --raster "$L8" --sensor l8 --bands B2 B3 B4 --labels "$POLY" --field name \
  --classes water crop tree developed --colours '#1f78b4' '#ffd92f' '#33a02c' '#e31a1c' \
  --checkpoint "$OUT/encoder.safetensors" --out "$BUILD/probe" --head "$OUT/heads/landcover.safetensors"
cp "$BUILD/probe/metrics.json" "$OUT/landcover_metrics.json"

# 4. baselines for the README: same architecture with random weights; Gaussian-noise features
python -m training.cli probe --raster "$L8" --sensor l8 --bands B2 B3 B4 --labels "$POLY" --field name \
  --classes water crop tree developed --checkpoint "$OUT/encoder.safetensors" --random-init \
  --out "$BUILD/probe_random_init"
python -m training.cli probe --raster "$L8" --sensor l8 --bands B2 B3 B4 --labels "$POLY" --field name \
  --classes water crop tree developed --checkpoint "$OUT/encoder.safetensors" --baseline noise \
  --out "$BUILD/probe_noise"
