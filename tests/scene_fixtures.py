"""Helpers for the scene tests: real GeoTIFFs written with rasterio, and windows of the shipped Landsat crop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS

REPO = Path(__file__).resolve().parents[1]
LANDSAT = REPO / "examples" / "data" / "landsat8" / "LC08_224078_20200518_crop512.tif"
CHECKPOINT = REPO / "artifacts" / "demo" / "encoder.safetensors"
HEADS = REPO / "artifacts" / "demo" / "heads"
# The crop's top-left corner (EPSG:32621, 30 m pixels); bboxes below are offsets from it in whole 30 m pixels.
L8_LEFT, L8_TOP = 735345.0, -2791995.0


def l8_bbox(col: int, row: int, width_m: float, height_m: float) -> tuple[float, float, float, float]:
    left, top = L8_LEFT + 30 * col, L8_TOP - 30 * row
    return left, top - height_m, left + width_m, top


def write(path: Path, data: np.ndarray, crs: CRS | None, tf: Affine, nodata: float | None = None) -> Path:
    count, height, width = data.shape
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=count, dtype=data.dtype,
                       crs=crs, transform=tf, nodata=nodata) as dst:
        dst.write(data)
    return path
