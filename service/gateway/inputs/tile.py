"""What every decoder produces: per tile, per sensor, the raw array with its dates and georeference."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from affine import Affine


@dataclass(frozen=True)
class Georef:
    crs: str | None  # WKT or an authority string ("EPSG:32621"); None = unknown CRS
    transform: Affine  # pixel -> map coordinates of the top-left corner
    width: int
    height: int

    def to_json(self) -> dict[str, object]:
        t = self.transform
        return {"crs": self.crs, "transform": [t.a, t.b, t.c, t.d, t.e, t.f], "width": self.width,
                "height": self.height}

    def resampled(self, width: int, height: int) -> Georef:
        """The same ground on a ``width`` x ``height`` grid (output patch, dense or mask grids)."""
        sx, sy = self.width / width, self.height / height
        t = self.transform
        return Georef(self.crs, Affine(t.a * sx, t.b * sy, t.c, t.d * sx, t.e * sy, t.f), width, height)


@dataclass(frozen=True)
class SensorInput:
    field: str  # where it came from, for error messages: "s2", "tiles[0].s2"
    data: np.ndarray  # raw values, [C, H, W] or [T, C, H, W], any numeric dtype
    dates: np.ndarray | None = None  # int64 [T], 1-based day of year
    georef: Georef | None = None
    dates_field: str = ""  # where its dates came from ("s2_dates", "tiles[0].s2.dates")
    # Where the input declares nodata (a GeoTIFF's nodata value or mask): True = a real value, in a shape that
    # broadcasts to ``data``'s (1 on the band or date axis when the mask holds for all). None = all values are real.
    valid: np.ndarray | None = None


TileInput = dict[str, SensorInput]
