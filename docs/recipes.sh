# Recipes for the shipped data, against the service `bash scripts/run.sh` starts (http://127.0.0.1:8000: the demo
# encoder and its land-cover head). Run them from the repository root with the environment active
# (`. .venv/bin/activate`). tests/test_readme_recipes.py runs every recipe below, as written, against a live
# `anysat serve` (only the address is changed, to the test server's); the README shows them as they are here.

# --- embed-treesatai: the shipped TreeSatAI-TS tile (aerial GeoTIFF + Sentinel-2/1 series from its HDF5 file)
# -> one embedding per 20 m patch. The aerial file is 304 px = 60.8 m; crop=center crops it to the 60 m the
# series cover. The series go as .npy files with their dates (curl's `<file` reads a field from a file).
python examples/treesatai_series.py build/treesatai
curl -sS --fail-with-body http://127.0.0.1:8000/v1/embeddings \
  -F aerial=@examples/data/treesatai-ts/Abies_alba_1_1005_WEFL_NLF.tif \
  -F s2=@build/treesatai/s2.npy -F 's2_dates=<build/treesatai/s2_dates.txt' \
  -F s1-asc=@build/treesatai/s1-asc.npy -F 's1-asc_dates=<build/treesatai/s1-asc_dates.txt' \
  -F patch_size=20 -F crop=center -F output=patch -F format=npy \
  -o build/treesatai/embedding.npy
python -c "import numpy as np; print(np.load('build/treesatai/embedding.npy').shape)"  # (1, 3, 3, 64)

# --- mask-landsat: the shipped Landsat 8 crop -> a land-cover mask GeoTIFF (water / crop / tree / developed).
# The crop holds B2, B3, B4 at 30 m; the l8 sensor takes 11 bands at 10 m: the helper writes a 1.2 km window
# that way. normalize=auto (the default) uses the statistics the head was fitted with.
python examples/landsat_l8_tile.py build/l8.tif
curl -sS --fail-with-body http://127.0.0.1:8000/v1/masks \
  -F l8=@build/l8.tif -F l8_dates=2020-05-18 -F head=landcover -F format=geotiff \
  -o build/mask.tif
python -c "import rasterio; m = rasterio.open('build/mask.tif'); print(m.shape, m.crs, m.tags()['classes'])"
