"""Cloud-Optimized GeoTIFF output, written incrementally.

Strips go into an uncompressed tiled GeoTIFF beside the output (windowed writes; rewriting a compressed block
would leave the old one behind), which ``finish`` turns into the COG with rio-cogeo (deflate, internal tiles,
overviews; streamed, never the whole raster in memory), validates, and renames into place: nothing at ``path``
is ever a half-written file."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window
from rio_cogeo.cogeo import cog_translate, cog_validate
from rio_cogeo.profiles import cog_profiles

Colormap = Mapping[int, tuple[int, int, int, int]]


def hex_colormap(colours: Sequence[str]) -> dict[int, tuple[int, int, int, int]]:
    """``["#1f78b4", ...]`` -> a GeoTIFF palette, class index -> RGBA."""
    return {i: (int(c[1:3], 16), int(c[3:5], 16), int(c[5:7], 16), 255) for i, c in enumerate(colours)}


class CogWriter:
    """``write(row0, [bands, rows, width])`` strips in any order, then ``finish()``. ``work``: the temporary
    GeoTIFF (kept by ``close()`` for a resumed run, removed by ``finish()``)."""

    def __init__(self, path: str | os.PathLike[str], *, crs: CRS, transform: Affine, width: int, height: int,
                 count: int, dtype: str, nodata: float | None, work: str | os.PathLike[str] | None = None,
                 descriptions: Sequence[str] = (), colormap: Colormap | None = None,
                 tags: Mapping[str, str] | None = None, resume: bool = False, blocksize: int = 256) -> None:
        self.path = Path(path)
        self.work = Path(work) if work is not None else self.path.with_name(self.path.name + ".partial.tif")
        self.count, self.dtype, self.nodata = count, np.dtype(dtype), nodata
        self.colormap, self.tags = dict(colormap or {}), dict(tags or {})
        self.blocksize = blocksize
        self.descriptions = tuple(descriptions)
        profile: dict[str, Any] = {"driver": "GTiff", "width": width, "height": height, "count": count,
                                   "dtype": self.dtype.name, "crs": crs, "transform": transform, "nodata": nodata,
                                   "tiled": True, "blockxsize": 256, "blockysize": 256, "BIGTIFF": "IF_SAFER"}
        if resume and self.work.is_file():
            self._dst = rasterio.open(self.work, "r+")
        else:
            self.work.parent.mkdir(parents=True, exist_ok=True)
            self._dst = rasterio.open(self.work, "w", **profile)
            for i, d in enumerate(self.descriptions, start=1):
                self._dst.set_band_description(i, d)
            if self.tags:
                self._dst.update_tags(**self.tags)

    def write(self, row0: int, data: np.ndarray) -> None:
        _, rows, width = data.shape
        self._dst.write(data.astype(self.dtype, copy=False), window=Window(0, row0, width, rows))

    def checkpoint(self) -> None:
        """Everything written so far on disk (the file closed and reopened), for a resumable state."""
        self._dst.close()
        self._dst = rasterio.open(self.work, "r+")

    def close(self) -> None:
        self._dst.close()

    def finish(self) -> Path:
        self._dst.close()
        profile = cog_profiles.get("deflate")
        profile.update(blockxsize=self.blocksize, blockysize=self.blocksize, BIGTIFF="IF_SAFER")
        if self.dtype.kind == "f":
            profile["predictor"] = 3  # floating-point predictor: embeddings compress ~2x better
        tmp = self.path.with_name(self.path.name + ".cog.tmp")
        categorical = bool(self.colormap) or self.dtype == np.uint8
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*color interpretation.*")  # a palette is what we set
            warnings.filterwarnings("ignore", category=PendingDeprecationWarning)  # rio-cogeo's own Affine use
            cog_translate(self.work, tmp, profile, nodata=self.nodata, in_memory=False, quiet=True,
                          overview_resampling="nearest" if categorical else "average",
                          colormap=self.colormap or None, additional_cog_metadata=self.tags or None,
                          config={"GDAL_TIFF_INTERNAL_MASK": True, "GDAL_NUM_THREADS": "1"})
        valid, errors, _ = cog_validate(tmp, quiet=True)
        if not valid:
            raise RuntimeError(f"{tmp}: not a valid COG after translation: {errors}")
        os.replace(tmp, self.path)
        self.work.unlink(missing_ok=True)
        return self.path
