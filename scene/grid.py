"""The ground-unit tile grid: one output CRS, tiles of ``tile_m`` metres with ``overlap_m`` of overlap.

Tile origins are offsets (metres) from the area's top-left corner. ``exact`` is the training cutter's grid (as
many whole tiles as fit, no overlap); ``covering`` is inference's: it covers the whole area (floored to
``unit_m``, the output pixel), tiles stepping by ``tile_m - overlap_m``, the last row and column moved back to
end at the area's edge, so no tile reads past the inputs. Every offset is a multiple of ``unit_m`` (the patch
size), so each sensor's pixels and the output pixels of every tile fall on one common grid."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform_bounds

from scene.errors import SceneError

Bounds = tuple[float, float, float, float]  # left, bottom, right, top
_EPS = 1e-9


@dataclass(frozen=True)
class Tile:
    id: str  # "r{row:04d}_c{col:04d}": stable across runs of one grid, the key results are written under
    row: int
    col: int
    x0: float  # offsets (m) of the tile's top-left corner from the grid's top-left corner
    y0: float
    bounds: Bounds  # in the grid's CRS


@dataclass(frozen=True)
class TileGrid:
    crs: CRS
    left: float
    top: float
    width_m: float
    height_m: float
    tile_m: float
    overlap_m: float
    offsets_x: tuple[float, ...]
    offsets_y: tuple[float, ...]

    @property
    def nrows(self) -> int:
        return len(self.offsets_y)

    @property
    def ncols(self) -> int:
        return len(self.offsets_x)

    @property
    def n_tiles(self) -> int:
        return self.nrows * self.ncols

    @property
    def bounds(self) -> Bounds:
        return self.left, self.top - self.height_m, self.left + self.width_m, self.top

    def transform(self, px: float) -> Affine:
        """The grid's top-left corner at pixel size ``px`` metres."""
        return Affine(px, 0.0, self.left, 0.0, -px, self.top)

    def shape(self, px: float) -> tuple[int, int]:
        """``(height, width)`` of the whole area in pixels of ``px`` metres."""
        return round(self.height_m / px), round(self.width_m / px)

    def tile(self, row: int, col: int) -> Tile:
        x0, y0 = self.offsets_x[col], self.offsets_y[row]
        left, top = self.left + x0, self.top - y0
        return Tile(f"r{row:04d}_c{col:04d}", row, col, x0, y0, (left, top - self.tile_m, left + self.tile_m, top))

    def tiles(self) -> Iterator[Tile]:
        """Raster order: row by row, left to right (the order strips of the output are finished in)."""
        for row in range(self.nrows):
            for col in range(self.ncols):
                yield self.tile(row, col)

    def aligned(self, px: float) -> bool:
        """Whether every tile origin is a whole number of ``px`` pixels from the corner."""
        return all(abs(o / px - round(o / px)) < 1e-6 for o in self.offsets_x + self.offsets_y)

    @classmethod
    def exact(cls, crs: CRS, bounds: Bounds, tile_m: float) -> TileGrid:
        left, bottom, right, top = bounds
        ncols = math.floor((right - left) / tile_m + _EPS)
        nrows = math.floor((top - bottom) / tile_m + _EPS)
        if ncols < 1 or nrows < 1:
            raise SceneError("tile_size", f"the common area ({right - left:.0f} m x {top - bottom:.0f} m) is smaller "
                                          f"than one {tile_m:g} m tile")
        return cls(crs, left, top, ncols * tile_m, nrows * tile_m, tile_m, 0.0,
                   tuple(c * tile_m for c in range(ncols)), tuple(r * tile_m for r in range(nrows)))

    @classmethod
    def covering(cls, crs: CRS, bounds: Bounds, tile_m: float, overlap_m: float, unit_m: float) -> TileGrid:
        for name, value in (("tile_size", tile_m), ("overlap", overlap_m)):
            if abs(value / unit_m - round(value / unit_m)) > 1e-6:
                raise SceneError(name, f"{value:g} m is not a whole number of {unit_m:g} m patches")
        if not 0 <= overlap_m <= tile_m / 2:
            raise SceneError("overlap", f"{overlap_m:g} m: between 0 and half the tile ({tile_m / 2:g} m)")
        left, bottom, right, top = bounds
        width = math.floor((right - left) / unit_m + _EPS) * unit_m
        height = math.floor((top - bottom) / unit_m + _EPS) * unit_m
        if width < tile_m or height < tile_m:
            raise SceneError("tile_size", f"the common area ({right - left:.0f} m x {top - bottom:.0f} m) is smaller "
                                          f"than one {tile_m:g} m tile; pass a smaller --tile-size")
        return cls(crs, left, top, width, height, tile_m, overlap_m, _offsets(width, tile_m, tile_m - overlap_m),
                   _offsets(height, tile_m, tile_m - overlap_m))


def _offsets(extent: float, tile: float, stride: float) -> tuple[float, ...]:
    out = [0.0]
    while out[-1] + tile < extent - _EPS:
        out.append(min(out[-1] + stride, extent - tile))
    return tuple(out)


def projected_crs(crs: CRS, field: str = "crs") -> CRS:
    if not crs.is_projected or (crs.linear_units or "").lower() not in ("metre", "meter", "m"):
        raise SceneError(field, f"{crs} is not projected in metres; give an output CRS (e.g. a UTM zone, "
                                f"--crs EPSG:32632)")
    return crs


def common_area(footprints: Sequence[tuple[str, CRS, Bounds]], crs: CRS, bbox: Bounds | None = None) -> Bounds:
    """The intersection of every input's footprint (``(label, its CRS, its bounds)``) and ``bbox``, in ``crs``;
    a SceneError naming the first input that falls outside the others."""
    left, bottom, right, top = bbox if bbox is not None else (-math.inf, -math.inf, math.inf, math.inf)
    for label, src_crs, src_bounds in footprints:
        b = transform_bounds(src_crs, crs, *src_bounds, densify_pts=21)
        nl, nb, nr, nt = max(left, b[0]), max(bottom, b[1]), min(right, b[2]), min(top, b[3])
        if not (nl < nr and nb < nt):
            where = "the other inputs" + (" and the bbox" if bbox is not None else "")
            raise SceneError(label, f"does not overlap {where} (its bounds in {crs.to_string()}: "
                                    f"{', '.join(f'{v:.0f}' for v in b)}; common area so far: "
                                    f"{', '.join(f'{v:.0f}' for v in (left, bottom, right, top))})")
        left, bottom, right, top = nl, nb, nr, nt
    return left, bottom, right, top


def vector_bounds(path: str | os.PathLike[str], crs: CRS, field: str = "aoi") -> Bounds:
    """The bounds, in ``crs``, of every feature of a vector file (GeoPackage, GeoJSON, Shapefile, ...): an area of
    interest. Read from the file's header (pyogrio), no geometry loaded; a SceneError naming ``field`` when the file
    cannot be read, has no CRS or no features."""
    import pyogrio  # the vector reader: only when an area of interest is given

    try:
        info = pyogrio.read_info(path, force_total_bounds=True)
    except Exception as exc:  # pyogrio raises its own DataSourceError / DataLayerError, and OSError
        raise SceneError(field, f"{os.fspath(path)}: not a readable vector file ({exc})") from None
    if not info.get("crs"):
        raise SceneError(field, f"{os.fspath(path)}: the file has no CRS")
    bounds = info.get("total_bounds")
    if not info.get("features") or bounds is None or not all(math.isfinite(v) for v in bounds):
        raise SceneError(field, f"{os.fspath(path)}: no features")
    left, bottom, right, top = transform_bounds(CRS.from_user_input(info["crs"]), crs, *bounds, densify_pts=21)
    return left, bottom, right, top
