"""What a scene job asks for (built by ``anysat predict`` from flags, or by the jobs API from a request body)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from scene.grid import Bounds
from scene.sources import SensorSource

OUTPUTS = ("dense", "patch", "tile")
EMBEDDING_DTYPES = ("float32", "float16", "int8")


@dataclass(frozen=True)
class SceneJob:
    sources: dict[str, SensorSource]
    out: Path  # .tif (dense, patch) or .parquet (tile)
    output: Literal["dense", "patch", "tile"] = "dense"
    # dense + a segmentation head: a uint8 class map. patch / tile: the head chooses the patch size and the
    # normalisation it was fitted with; the output is the encoder's embeddings.
    head: str | None = None
    tile_size_m: float | None = None  # default: 32 patches
    overlap_m: float | None = None  # default: a quarter of the tile, in whole patches
    patch_size: int | None = None  # default: the head's, else 20
    output_modality: str | None = None  # dense without a head: the sensor whose grid (default: the first given)
    crs: str | None = None  # output grid CRS (projected, metres); default: the first file's
    bbox: Bounds | None = None  # in the output CRS; default: the inputs' common area
    normalize: Literal["auto", "none"] = "auto"
    embedding_dtype: Literal["float32", "float16", "int8"] = "float32"
    int8_range: float = 8.0  # int8 embeddings: values in [-range, range] quantised to [-127, 127]
    aoi: Path | None = None  # a vector file whose features' extent is the area (instead of a bbox)


@dataclass(frozen=True)
class SceneLimits:
    """Bounds one job may not pass (refused before any work); the jobs API reads them from its settings."""

    max_area_km2: float = 50_000.0
    max_tiles: int = 200_000
    max_in_flight_tiles: int = 64  # tiles read and prepared ahead of the model, at most
