"""Georeferenced inputs must cover the same ground: same CRS, corners within half a pixel of the coarsest
sensor. Reports which sensor is off and by how much. MODIS (a context pixel, larger than the tile) is exempt."""

from __future__ import annotations

from rasterio.crs import CRS
from rasterio.errors import CRSError

from model.sensors import SENSORS
from service.gateway.errors import InputError
from service.gateway.inputs.tile import Georef, TileInput


def _corners(g: Georef) -> list[tuple[float, float]]:
    t = g.transform
    return [(t.a * col + t.b * row + t.c, t.d * col + t.e * row + t.f)
            for col, row in ((0, 0), (g.width, 0), (0, g.height), (g.width, g.height))]


def _pixel_size(g: Georef) -> float:
    t = g.transform
    return max((t.a**2 + t.d**2) ** 0.5, (t.b**2 + t.e**2) ** 0.5)


def reference(tile: TileInput) -> tuple[str, Georef] | None:
    """The georeference of the tile: that of its first georeferenced, non-context sensor."""
    for name, s in tile.items():
        if s.georef is not None and not SENSORS[name].context:
            return name, s.georef
    return None


def check_alignment(tile: TileInput) -> None:
    placed = {n: s for n, s in tile.items() if s.georef is not None and not SENSORS[n].context}
    crs: dict[str, CRS | None] = {}
    for name, s in placed.items():
        assert s.georef is not None
        try:
            crs[name] = CRS.from_user_input(s.georef.crs) if s.georef.crs else None
        except CRSError as exc:
            raise InputError(f"{s.field}.crs", f"not a CRS rasterio understands: {exc}") from None
        gsd, size = SENSORS[name].gsd, _pixel_size(s.georef)
        if abs(size - gsd) > 0.02 * gsd:
            raise InputError(s.field, f"pixels are {size:g} m but {name} is a {gsd:g} m sensor; "
                                      f"resample to {gsd:g} m first")
    if len(placed) < 2:
        return
    coarsest = max(placed, key=lambda n: _pixel_size(placed[n].georef))  # type: ignore[arg-type]
    ref = placed[coarsest].georef
    assert ref is not None
    tolerance = _pixel_size(ref) / 2
    for name, s in placed.items():
        if name == coarsest:
            continue
        assert s.georef is not None
        if crs[name] != crs[coarsest]:
            raise InputError(s.field, f"CRS differs from {coarsest}'s; send every sensor in one CRS")
        offset = max(max(abs(a[0] - b[0]), abs(a[1] - b[1]))
                     for a, b in zip(_corners(s.georef), _corners(ref), strict=True))
        if offset > tolerance:
            raise InputError(s.field, f"extent is off by {offset:.3g} m from {coarsest}'s (tolerance "
                                      f"{tolerance:g} m = half a pixel of the coarsest sensor)")
