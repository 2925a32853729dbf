"""Which files hold which sensor, with which dates and bands: ``--sensor``/``--dates``/``--bands`` parsed and
checked against the files' headers (opened, never read) before any work starts.

A time series is one file per date (dates given in file order, or parsed from the names) or one multi-band
file laid out dates x bands (band ``t*C + c`` is band ``c`` of date ``t``, as the gateway's multipart input)
with its dates given. A file may hold a subset of its sensor's bands (``bands``, in file order)."""

from __future__ import annotations

import datetime as dt
import glob
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import rasterio
from rasterio.errors import RasterioIOError

from model.sensors import SENSORS, Sensor
from scene.dates import parse_product_date, to_date
from scene.errors import SceneError

FROM_FILENAMES = "from-filenames"


@dataclass(frozen=True)
class DatedFile:
    path: Path
    dates: tuple[dt.date, ...] | None = None  # None: a single-date sensor; several: a multi-band series file


@dataclass(frozen=True)
class SensorSource:
    sensor: str
    files: tuple[DatedFile, ...]
    bands: tuple[str, ...] | None = None  # the files' bands, in file order; None: all of the sensor's, table order
    nodata: float | None = None  # the value meaning "no data" where the files do not declare one
    # Per-date valid masks (cloud masks), one raster per file, in file order: one band per date of its file,
    # nonzero = a clear, valid pixel; 0 or the mask's own nodata = not valid. None: the files' nodata only.
    masks: tuple[Path, ...] | None = None

    @property
    def band_names(self) -> tuple[str, ...]:
        return self.bands if self.bands is not None else SENSORS[self.sensor].bands

    @property
    def dates(self) -> tuple[dt.date, ...]:
        return tuple(d for f in self.files for d in (f.dates or ()))


def _split(value: str | Sequence[str]) -> list[str]:
    items = value.split(",") if isinstance(value, str) else list(value)
    return [v.strip() for v in items if v.strip()]


def _expand(name: str, value: str | Sequence[str | os.PathLike[str]]) -> list[Path]:
    patterns = [value] if isinstance(value, str) else [str(v) for v in value]
    paths: list[Path] = []
    for pattern in patterns:
        hits = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not hits:
            raise SceneError(f"sensor.{name}", f"{pattern!r} matches no file")
        for hit in hits:
            if not Path(hit).is_file() and not hit.startswith("/vsi"):
                raise SceneError(f"sensor.{name}", f"{hit}: no such file")
            paths.append(Path(hit))
    return paths


def _bands(sensor: Sensor, value: str | Sequence[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    names = _split(value)
    unknown = [b for b in names if b not in sensor.bands]
    if unknown or not names:
        raise SceneError(f"bands.{sensor.name}", f"{unknown or names} are not {sensor.name} bands "
                                                 f"({', '.join(sensor.bands)})")
    if len(set(names)) != len(names):
        raise SceneError(f"bands.{sensor.name}", f"a band is named twice in {names}")
    return tuple(names)


def _counts(name: str, paths: Sequence[Path]) -> list[int]:
    counts = []
    for path in paths:
        try:
            with rasterio.open(path) as src:
                if src.crs is None:
                    raise SceneError(f"sensor.{name}", f"{path} has no CRS: georeference it (e.g. gdal_edit.py "
                                                       f"-a_srs EPSG:...) so its pixels can be placed on the ground")
                counts.append(src.count)
        except RasterioIOError as exc:
            raise SceneError(f"sensor.{name}", f"cannot open {path} ({exc})") from None
    return counts


def _dated(sensor: Sensor, paths: list[Path], counts: list[int], channels: int, spec: str | None
           ) -> tuple[DatedFile, ...]:
    field = f"dates.{sensor.name}"
    if not sensor.time_series:
        if spec is not None:
            raise SceneError(field, f"{sensor.name} is a single-date sensor; it takes no dates")
        if len(paths) != 1:
            raise SceneError(f"sensor.{sensor.name}", f"{sensor.name} is a single-date sensor: one file (a VRT "
                                                      f"mosaics several), got {len(paths)}")
        if counts[0] != channels:
            raise SceneError(f"sensor.{sensor.name}", f"{paths[0]} has {counts[0]} bands, expected {channels}"
                                                      f"{_band_hint(sensor)}")
        return (DatedFile(paths[0]),)
    for path, count in zip(paths, counts, strict=True):
        if count % channels:
            raise SceneError(f"sensor.{sensor.name}", f"{path} has {count} bands, not a multiple of the {channels} "
                                                      f"bands per date{_band_hint(sensor)}")
    if spec is None or spec.strip() == FROM_FILENAMES:
        files = []
        for path, count in zip(paths, counts, strict=True):
            if count != channels:
                raise SceneError(field, f"{path} holds {count // channels} dates: give them "
                                        f"(--dates {sensor.name}=YYYY-MM-DD,...)")
            try:
                files.append(DatedFile(path, (parse_product_date(path.name),)))
            except ValueError:
                raise SceneError(field, f"{path.name}: no YYYYMMDD date in the file name; give the dates "
                                        f"(--dates {sensor.name}=YYYY-MM-DD,...)") from None
        return tuple(files)
    try:
        dates = [to_date(d) for d in _split(spec)]
    except ValueError as exc:
        raise SceneError(field, f"{spec!r}: not dates YYYY-MM-DD ({exc})") from None
    per_file = [c // channels for c in counts]
    if len(dates) != sum(per_file):
        layout = " + ".join(f"{n} in {p.name}" for n, p in zip(per_file, paths, strict=True))
        raise SceneError(field, f"{len(dates)} dates given for {sum(per_file)} acquisitions ({layout})")
    out, i = [], 0
    for path, n in zip(paths, per_file, strict=True):
        out.append(DatedFile(path, tuple(dates[i:i + n])))
        i += n
    return tuple(out)


def _band_hint(sensor: Sensor) -> str:
    return f"; name the file's bands (--bands {sensor.name}=B2,B3,B4, of {', '.join(sensor.bands)})"


def _masks(name: str, value: str | Sequence[str | os.PathLike[str]], files: tuple[DatedFile, ...]
           ) -> tuple[Path, ...]:
    paths = _expand(name, value)
    if len(paths) != len(files):
        raise SceneError(f"mask.{name}", f"{len(paths)} mask files for {len(files)} {name} files (one per file, "
                                         f"in the same order)")
    for path, f in zip(paths, files, strict=True):
        want = len(f.dates or ()) or 1
        with rasterio.open(path) as src:
            if src.crs is None:
                raise SceneError(f"mask.{name}", f"{path} has no CRS")
            if src.count != want:
                raise SceneError(f"mask.{name}", f"{path} has {src.count} bands; {f.path.name} holds {want} "
                                                 f"date(s): one mask band per date")
    return tuple(paths)


def parse_sources(sensors: Mapping[str, str | Sequence[str | os.PathLike[str]]],
                  dates: Mapping[str, str] | None = None, bands: Mapping[str, str | Sequence[str]] | None = None,
                  nodata: Mapping[str, float] | None = None,
                  masks: Mapping[str, str | Sequence[str | os.PathLike[str]]] | None = None
                  ) -> dict[str, SensorSource]:
    """``sensors``: name -> glob, path or paths; ``dates``: name -> ``from-filenames`` or ``d1,d2,...`` (file order;
    the default for a series is from-filenames); ``bands``: name -> the files' bands in file order; ``masks``:
    name -> valid-mask rasters, one per file (see ``SensorSource.masks``)."""
    if not sensors:
        raise SceneError("sensor", "no sensor given (--sensor NAME=GLOB)")
    dates, bands, nodata, masks = dict(dates or {}), dict(bands or {}), dict(nodata or {}), dict(masks or {})
    for what, given in (("dates", dates), ("bands", bands), ("nodata", nodata), ("mask", masks)):
        for name in given:
            if name not in sensors:
                raise SceneError(f"{what}.{name}", f"{name!r} is not one of the sensors given ({', '.join(sensors)})")
    out: dict[str, SensorSource] = {}
    for name, value in sensors.items():
        if name not in SENSORS:
            raise SceneError(f"sensor.{name}", f"unknown sensor {name!r}; expected one of {', '.join(sorted(SENSORS))}")
        sensor = SENSORS[name]
        band_names = _bands(sensor, bands.get(name))
        paths = _expand(name, value)
        counts = _counts(name, paths)
        channels = len(band_names) if band_names is not None else sensor.channels
        files = _dated(sensor, paths, counts, channels, dates.get(name))
        if sensor.time_series:
            all_dates = [d for f in files for d in (f.dates or ())]
            if len(set(all_dates)) != len(all_dates):
                raise SceneError(f"dates.{name}", f"a date appears twice: {sorted(d.isoformat() for d in all_dates)}")
        mask_files = _masks(name, masks[name], files) if name in masks else None
        out[name] = SensorSource(name, files, band_names, nodata.get(name), mask_files)
    return out
