"""One scene tile as the gateway's ``TileInput``: absent bands filled, nodata as the model's value mask, dates
as day of year; and the tile's output weight (the blend window times where any input was valid)."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import numpy as np

from model.sensors import SENSORS
from scene.blend import window
from scene.dates import day_of_year
from scene.layers import SensorRead
from service.gateway.inputs.tile import Georef, SensorInput, TileInput

if TYPE_CHECKING:
    from service.gateway.scenes.plan import ScenePlan


def _full_bands(name: str, data: np.ndarray, bands: tuple[str, ...], fill: np.ndarray) -> np.ndarray:
    sensor = SENSORS[name]
    if bands == sensor.bands:
        return data
    shape = list(data.shape)
    shape[-3] = sensor.channels
    out = np.empty(shape, np.float32)
    out[...] = fill.reshape(-1, 1, 1)
    idx = [sensor.bands.index(b) for b in bands]
    out[..., idx, :, :] = data
    return out


def synthetic_input(plan: ScenePlan, date: dt.date) -> TileInput:
    """A tile of zeros of the job's shapes (one date per series), for checking the job before work."""
    tile: TileInput = {}
    for name in plan.job.sources:
        sensor = SENSORS[name]
        side = 1 if sensor.context else round(plan.grid.tile_m / sensor.gsd)
        shape = ([1] if sensor.time_series else []) + [sensor.channels, side, side]
        dates = np.asarray([day_of_year(date)], np.int64) if sensor.time_series else None
        tile[name] = SensorInput(name, np.zeros(shape, np.float32), dates=dates,
                                 dates_field=f"dates.{name}")
    return tile


def _block_any(valid: np.ndarray, n: int) -> np.ndarray:
    """``[m, m]`` validity on an ``[n, n]`` grid: a cell is valid if any pixel under it is (repeated if finer)."""
    m = valid.shape[-1]
    if m == n:
        return valid
    if m > n:
        k = m // n
        return np.asarray(valid[: n * k, : n * k].reshape(n, k, n, k).any(axis=(1, 3)))
    k = n // m
    return valid.repeat(k, axis=0).repeat(k, axis=1)


def tile_input(plan: ScenePlan, reads: dict[str, SensorRead]
               ) -> tuple[TileInput, np.ndarray, tuple[dt.date, ...]] | None:
    """The tile as a request and its ``[n, n]`` output weight (n = output pixels per tile side; for one row per
    tile ``[1, 1]``, the fraction of the tile's patches with valid input), or None when no input has valid data
    there (the tile is skipped, its output nodata). A series date with no valid pixel is dropped; a single-date
    image's holes are filled (the model has no mask for them) and carry no weight in the output. Third: the dates
    the tile's series kept, sorted."""
    # validity on the output grid (one row per tile: on the patch grid, for the tile's valid fraction)
    n = plan.tile_out_px if plan.out_px is not None else round(plan.grid.tile_m / plan.query.patch_size)
    covered = np.zeros((n, n), bool)
    tile: TileInput = {}
    kept: set[dt.date] = set()
    for name, read in reads.items():
        sensor = SENSORS[name]
        fill = plan.fill[name]
        if sensor.time_series:
            keep = np.asarray(read.valid.reshape(len(read.valid), -1).any(axis=1))
            if not keep.any():
                return None
            data, valid = read.data[keep], read.valid[keep]
            used = [d for d, k in zip(read.dates or (), keep, strict=True) if k]
            kept.update(used)
            dates = np.asarray([day_of_year(d) for d in used], np.int64)
        else:
            data, valid, dates = read.data, read.valid, None
            if not valid.any():
                return None
        full = _full_bands(name, data, read.bands, fill)
        if not valid.all() and not sensor.time_series:
            full = np.where(valid, full, fill.reshape(-1, 1, 1)).astype(np.float32)
        if not sensor.context:
            covered |= _block_any(np.asarray(valid.reshape(-1, *valid.shape[-2:]).any(axis=0)), n)
        georef = Georef(read.crs.to_wkt(), read.transform, read.data.shape[-1], read.data.shape[-2])
        tile[name] = SensorInput(name, full, dates=dates, georef=georef, dates_field=f"dates.{name}",
                                 valid=valid if sensor.time_series and not valid.all() else None)
    if not covered.any():
        return None
    if plan.out_px is None:
        return tile, np.full((1, 1), covered.mean(), np.float32), tuple(sorted(kept))
    return tile, window(n, plan.ramp_out_px) * covered, tuple(sorted(kept))
