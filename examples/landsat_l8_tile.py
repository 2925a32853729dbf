"""Cut a window of the shipped Landsat 8 crop into the ``l8`` GeoTIFF the model takes.

    python examples/landsat_l8_tile.py build/l8.tif                 # 1,200 m around the labelled crop field
    python examples/landsat_l8_tile.py build/l8.tif --col 60 --row 95 --size 40

``examples/data/landsat8/LC08_224078_20200518_crop512.tif`` holds three of Landsat 8's bands (B2, B3, B4) at
30 m. The model's ``l8`` sensor takes all 11 bands, in the sensor table's order (B8, B1, B2, ..., B11),
resampled to 10 m. This writes that: B2, B3, B4 from the file, each 30 m pixel repeated 3 x 3 (nearest, as the
training tile cutter samples a coarser raster onto the 10 m grid), and the eight absent bands 0 — what
training filled them with. The demo land-cover head recorded mean 0 / std 1 for those bands, so the service's
``normalize=auto`` keeps them at 0 exactly as training did. The CRS and transform are the crop's.

``--size`` is in 30 m pixels of the source; the default 40 (1,200 m, 120 x 120 px at 10 m) is 60 x 60 patches
at the head's 20 m, inside the gateway's default ``max_patches_per_tile`` (4,096).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

from model.sensors import SENSORS

SCENE = Path(__file__).parent / "data" / "landsat8" / "LC08_224078_20200518_crop512.tif"
FILE_BANDS = ("B2", "B3", "B4")  # the crop's bands, in file order
UPSAMPLE = 3  # 30 m -> the l8 sensor's 10 m


def l8_tile(out: Path, col: int = 229, row: int = 189, size: int = 40, scene: Path = SCENE) -> Path:
    sensor = SENSORS["l8"]
    with rasterio.open(scene) as src:
        if src.count != len(FILE_BANDS):
            raise SystemExit(f"{scene}: {src.count} bands, expected {len(FILE_BANDS)} ({', '.join(FILE_BANDS)})")
        window = Window(col, row, size, size).intersection(Window(0, 0, src.width, src.height))
        rgb = src.read(window=window)
        t = src.window_transform(window)
        crs = src.crs
    side = rgb.shape[-1] * UPSAMPLE
    bands = np.zeros((sensor.channels, rgb.shape[-2] * UPSAMPLE, side), rgb.dtype)
    for i, name in enumerate(FILE_BANDS):
        bands[sensor.bands.index(name)] = rgb[i].repeat(UPSAMPLE, axis=0).repeat(UPSAMPLE, axis=1)
    out.parent.mkdir(parents=True, exist_ok=True)
    transform = Affine(t.a / UPSAMPLE, t.b, t.c, t.d, t.e / UPSAMPLE, t.f)
    with rasterio.open(out, "w", driver="GTiff", count=sensor.channels, height=bands.shape[1], width=side,
                       dtype=bands.dtype.name, crs=crs, transform=transform, compress="deflate") as dst:
        dst.write(bands)
        for i, name in enumerate(sensor.bands, start=1):
            dst.set_band_description(i, name)
    print(f"{out}: l8, {sensor.channels} bands x {bands.shape[1]} x {side} px at 10 m "
          f"({side * 10} m; B2, B3, B4 from {scene.name}, the other bands 0)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="GeoTIFF to write")
    parser.add_argument("--col", type=int, default=229, help="left column of the window, in 30 m source pixels")
    parser.add_argument("--row", type=int, default=189, help="top row of the window, in 30 m source pixels")
    parser.add_argument("--size", type=int, default=40, help="window side, in 30 m source pixels")
    parser.add_argument("--scene", type=Path, default=SCENE, help="a 3-band (B2, B3, B4) Landsat 8 GeoTIFF")
    args = parser.parse_args()
    l8_tile(args.out, args.col, args.row, args.size, args.scene)


if __name__ == "__main__":
    main()
