"""Reading, writing and checking the per-tile, per-sensor safetensors files (spec in ``format``).

Every check compares against the sensor table (``model.sensors``), and every error names the file,
the sensor and what was expected, because these files are usually produced by users' own tools.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from model.sensors import Sensor, get_sensor

DAY_MIN, DAY_MAX = 1, 366
_META_KEY = "anysat"


@dataclass(frozen=True)
class Georef:
    """Where a tile array lies: CRS as WKT and the affine pixel-corner transform ``(a, b, c, d, e, f)``."""

    crs_wkt: str
    transform: tuple[float, float, float, float, float, float]


@dataclass(frozen=True)
class TileSensor:
    """One sensor's array for one tile, as stored (native dtype, possibly a subset of the bands)."""

    data: np.ndarray  # [C, H, W] or [T, C, H, W]
    dates: np.ndarray | None = None  # [T] int64, 1-based day of year
    bands: tuple[str, ...] | None = None  # None: all the sensor's bands
    georef: Georef | None = None
    nodata: float | None = None
    acquired: tuple[str, ...] | None = None  # ISO dates, same order as ``dates``


def expected_side(sensor: Sensor, tile_size_m: float) -> int:
    """Pixels per tile side for ``sensor``; a context sensor (MODIS) is one pixel per tile."""
    if sensor.context:
        return 1
    side = tile_size_m / sensor.gsd
    if abs(side - round(side)) > 1e-6 or round(side) < 1:
        raise ValueError(f"tile_size_m: {tile_size_m} m is not a whole number of {sensor.name} pixels "
                         f"({sensor.gsd} m each)")
    return round(side)


def check_bands(sensor: Sensor, bands: Sequence[str] | None, where: str) -> tuple[str, ...]:
    if bands is None:
        return sensor.bands
    bands = tuple(bands)
    unknown = [b for b in bands if b not in sensor.bands]
    if unknown or len(set(bands)) != len(bands) or not bands:
        raise ValueError(f"{where}: bands {list(bands)} must be distinct names among {sensor.name}'s "
                         f"{list(sensor.bands)}")
    order = [sensor.bands.index(b) for b in bands]
    if order != sorted(order):
        raise ValueError(f"{where}: bands {list(bands)} must follow the sensor table's order "
                         f"{list(sensor.bands)}")
    return bands


def check_tile_sensor(sensor_name: str, item: TileSensor, tile_size_m: float, where: str) -> Sensor:
    """Raise ``ValueError`` unless ``item`` is a valid ``sensor_name`` array for a tile of ``tile_size_m``."""
    sensor = get_sensor(sensor_name)
    where = f"{where}: sensor {sensor_name!r}"
    bands = check_bands(sensor, item.bands, where)
    side = expected_side(sensor, tile_size_m)
    data = item.data
    if not isinstance(data, np.ndarray) or data.dtype.kind not in "uif":
        raise ValueError(f"{where}: 'data' must be a numeric numpy array, got {type(data).__name__}"
                         f"{'' if not isinstance(data, np.ndarray) else ' of ' + str(data.dtype)}")
    band_desc = f"{len(bands)} bands {','.join(bands)}"
    size_desc = "1 px (context)" if sensor.context else f"{side} px = {tile_size_m:g} m / {sensor.gsd:g} m"
    if sensor.time_series:
        want = f"[T, {len(bands)}, {side}, {side}] (T dates, {band_desc}, {size_desc})"
        ok = data.ndim == 4 and data.shape[1:] == (len(bands), side, side) and data.shape[0] >= 1
    else:
        want = f"[{len(bands)}, {side}, {side}] ({band_desc}, {size_desc})"
        ok = data.shape == (len(bands), side, side)
    if not ok:
        raise ValueError(f"{where}: 'data' has shape {list(data.shape)}, expected {want}")
    if sensor.time_series:
        dates = item.dates
        if dates is None:
            raise ValueError(f"{where}: time series without 'dates' (expected [T] day-of-year values)")
        dates = np.asarray(dates)
        if dates.shape != (data.shape[0],) or dates.dtype.kind not in "iu":
            raise ValueError(f"{where}: 'dates' has shape {list(dates.shape)} and dtype {dates.dtype}, "
                             f"expected [{data.shape[0]}] integers (one per date)")
        if dates.min() < DAY_MIN or dates.max() > DAY_MAX:
            raise ValueError(f"{where}: 'dates' must be 1-based day of year in [{DAY_MIN}, {DAY_MAX}] "
                             f"(1 January = 1), got values in [{dates.min()}, {dates.max()}]")
        if item.acquired is not None and len(item.acquired) != data.shape[0]:
            raise ValueError(f"{where}: 'acquired' has {len(item.acquired)} dates, data has {data.shape[0]}")
    elif item.dates is not None:
        raise ValueError(f"{where}: 'dates' given for single-date sensor {sensor_name!r}")
    return sensor


def _georef_meta(georef: Georef | None) -> dict[str, Any]:
    if georef is None:
        return {}
    return {"crs": georef.crs_wkt, "transform": [float(v) for v in georef.transform]}


def _georef_from(meta: dict[str, Any], path: Path) -> Georef | None:
    if meta.get("crs") is None or meta.get("transform") is None:
        return None
    t = meta["transform"]
    if not isinstance(t, list) or len(t) != 6:
        raise ValueError(f"{path}: metadata 'transform' must be 6 affine coefficients, got {t!r}")
    return Georef(str(meta["crs"]), tuple(float(v) for v in t))  # type: ignore[arg-type]


def write_sensor_file(path: Path, sensor_name: str, item: TileSensor, tile_size_m: float) -> None:
    sensor = check_tile_sensor(sensor_name, item, tile_size_m, str(path))
    meta: dict[str, Any] = {"sensor": sensor_name, "bands": list(item.bands or sensor.bands)}
    if item.nodata is not None:
        meta["nodata"] = float(item.nodata)
    if item.acquired is not None:
        meta["acquired"] = list(item.acquired)
    meta.update(_georef_meta(item.georef))
    tensors = {"data": np.ascontiguousarray(item.data)}
    if sensor.time_series:
        tensors["dates"] = np.ascontiguousarray(np.asarray(item.dates, dtype=np.int64))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={_META_KEY: json.dumps(meta)})


def _open(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    if not path.is_file():
        raise ValueError(f"{path}: file missing (listed in the index)")
    try:
        with safe_open(str(path), "np") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
            raw = (f.metadata() or {}).get(_META_KEY)
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    if raw is None:
        raise ValueError(f"{path}: no {_META_KEY!r} metadata; not written by the anysat tile format")
    try:
        return tensors, json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: metadata {_META_KEY!r} is not JSON ({e})") from None


def read_sensor_file(path: Path, sensor_name: str, tile_size_m: float) -> TileSensor:
    """Read and validate one sensor file; the result holds the stored dtype and bands."""
    tensors, meta = _open(path)
    if meta.get("sensor") != sensor_name:
        raise ValueError(f"{path}: metadata 'sensor' is {meta.get('sensor')!r}, expected {sensor_name!r}")
    if "data" not in tensors:
        raise ValueError(f"{path}: no 'data' tensor")
    acquired = meta.get("acquired")
    item = TileSensor(data=tensors["data"], dates=tensors.get("dates"),
                      bands=tuple(meta["bands"]) if meta.get("bands") is not None else None,
                      georef=_georef_from(meta, path), nodata=meta.get("nodata"),
                      acquired=tuple(acquired) if acquired is not None else None)
    check_tile_sensor(sensor_name, item, tile_size_m, str(path))
    return item


def write_label_file(path: Path, mask: np.ndarray, georef: Georef | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"mask": np.ascontiguousarray(mask.astype(np.int32))}, str(path),
              metadata={_META_KEY: json.dumps({"label": "mask", **_georef_meta(georef)})})


def read_label_file(path: Path, side: int) -> tuple[np.ndarray, Georef | None]:
    tensors, meta = _open(path)
    mask = tensors.get("mask")
    if mask is None or mask.shape != (side, side) or mask.dtype.kind not in "iu":
        got = "nothing" if mask is None else f"{list(mask.shape)} {mask.dtype}"
        raise ValueError(f"{path}: 'mask' must be [{side}, {side}] integers, got {got}")
    return mask, _georef_from(meta, path)
