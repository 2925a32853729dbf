"""Tiles that do not fit the patch grid: say what the tile is and what would fit, or (``crop=center``) crop it.

The model needs every spatial sensor to cover the same square of ground, a whole number of patches on a side
(``model.plan_inputs``). Real files are often a little off — the shipped TreeSatAI aerial image is 304 px =
60.8 m at 0.2 m while its Sentinel series cover 60 m — so a refusal names each sensor's extent and the crop
that fits, and ``crop=center`` applies that crop: the largest square, a whole number of patches on a side,
inside every sensor, centred (to the nearest pixel of each sensor), georeference moved with it.
MODIS, one context pixel larger than the tile, is never cropped.
"""

from __future__ import annotations

import dataclasses
import math

from affine import Affine

from model.sensors import SENSORS
from service.gateway.errors import InputError
from service.gateway.inputs.tile import Georef, SensorInput, TileInput

_EPS = 1e-6


def _spatial(tile: TileInput) -> list[tuple[str, SensorInput]]:
    return [(n, s) for n, s in tile.items() if n in SENSORS and not SENSORS[n].context]


def _extent(name: str, s: SensorInput) -> tuple[int, int, float, float]:
    """``(height px, width px, height m, width m)``."""
    h, w = s.data.shape[-2:]
    gsd = SENSORS[name].gsd
    return h, w, h * gsd, w * gsd


def _describe(name: str, s: SensorInput) -> str:
    h, w, hm, wm = _extent(name, s)
    size = f"{w} px = {wm:g} m" if h == w else f"{h} x {w} px = {hm:g} x {wm:g} m"
    return f"{name} is {size} at {SENSORS[name].gsd:g} m"


def _target_m(tile: TileInput, patch_size: int) -> float:
    """The side of the largest square, a whole number of patches, that fits inside every spatial sensor."""
    smallest = min(min(_extent(n, s)[2:]) for n, s in _spatial(tile))
    return math.floor(smallest / patch_size + _EPS) * patch_size


def _pixels(name: str, metres: float) -> int | None:
    px = metres / SENSORS[name].gsd
    return round(px) if abs(px - round(px)) <= _EPS * max(1.0, px) else None


def _suggestion(tile: TileInput, patch_size: int) -> str:
    target = _target_m(tile, patch_size)
    if target <= 0:
        return f"it is smaller than one patch of {patch_size} m: send a larger tile or a smaller patch_size"
    sizes = [(n, _pixels(n, target)) for n, _ in _spatial(tile)]
    if any(px is None for _, px in sizes):
        return f"send a tile that is a multiple of {patch_size} m on a side"
    crop = ", ".join(f"{px} px of {n}" for n, px in sizes)
    return f"crop to {target:g} m ({crop}), or send crop=center"


def _off_grid(metres: float, patch_size: int) -> bool:
    grid = metres / patch_size
    return grid < 1 - _EPS or abs(grid - round(grid)) > _EPS * grid


def check_fit(tile: TileInput, patch_size: int) -> None:
    """Refuse, with the tile's extents and the crop that would fit, a tile ``plan_inputs`` would refuse for its
    extent (not square, sensors covering different ground, patch_size not dividing the side)."""
    spatial = _spatial(tile)
    if not spatial or patch_size <= 0 or patch_size % 10:
        return  # no extent to judge, or a patch_size plan_inputs refuses on its own
    extents = {n: _extent(n, s) for n, s in spatial}
    first, (_, _, side, _) = next(iter(extents.items()))
    for n, s in spatial:
        _, _, hm, wm = extents[n]
        if abs(hm - wm) > _EPS * wm:
            raise InputError(s.field, f"{_describe(n, s)}; tiles must be square: {_suggestion(tile, patch_size)}")
        if abs(wm - side) > _EPS * side:
            # blame the sensor that is off the patch grid (304 px aerial beside 6 px s2), else this one
            odd, other = (first, n) if _off_grid(extents[first][2], patch_size) else (n, first)
            raise InputError(tile[odd].field, f"{_describe(odd, tile[odd])} but {_describe(other, tile[other])}; "
                                              f"all sensors must cover the same ground: "
                                              f"{_suggestion(tile, patch_size)}")
    if _off_grid(side, patch_size):
        raise InputError("patch_size", f"{_describe(first, tile[first])}; with patch_size {patch_size} m a tile "
                                       f"must be a multiple of {patch_size} m on a side: "
                                       f"{_suggestion(tile, patch_size)}")


def _shifted(g: Georef, row: int, col: int, side: int) -> Georef:
    t = g.transform  # by hand: Affine's `*` composition with a translation is deprecated for this use
    return Georef(g.crs, Affine(t.a, t.b, t.c + col * t.a + row * t.b, t.d, t.e, t.f + col * t.d + row * t.e),
                  side, side)


def center_crop(tile: TileInput, patch_size: int) -> TileInput:
    """Every spatial sensor cropped to the largest centred square that is a whole number of patches and fits
    inside all of them (a view, no copy); a sensor that already fits is returned as it is."""
    if not _spatial(tile) or patch_size <= 0 or patch_size % 10:
        return tile
    target = _target_m(tile, patch_size)
    if target <= 0:
        name, s = _spatial(tile)[0]
        raise InputError("crop", f"{_describe(name, s)}: smaller than one patch of {patch_size} m, nothing to crop "
                                 f"to; send a larger tile or a smaller patch_size")
    out = dict(tile)
    for name, s in _spatial(tile):
        px = _pixels(name, target)
        if px is None:
            raise InputError("crop", f"{target:g} m is not a whole number of {name}'s {SENSORS[name].gsd:g} m "
                                     f"pixels; choose a patch_size that is")
        h, w = s.data.shape[-2:]
        if (h, w) == (px, px):
            continue
        r0, c0 = (h - px) // 2, (w - px) // 2
        rows, cols = slice(r0, r0 + px), slice(c0, c0 + px)
        valid = None if s.valid is None else s.valid[..., rows, cols]
        georef = None if s.georef is None else _shifted(s.georef, r0, c0, px)
        out[name] = dataclasses.replace(s, data=s.data[..., rows, cols], valid=valid, georef=georef)
    return out
