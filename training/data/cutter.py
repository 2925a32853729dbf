"""The tile cutter: large georeferenced rasters of several sensors -> a tile dataset aligned on the ground.

The grid and the warping are ``scene``'s (``scene.grid.TileGrid.exact``, ``scene.layers``): one tiler serves
training and ``anysat predict``. Every raster is warped (``rasterio`` ``WarpedVRT``, read window by window, so
rasters larger than memory are fine) onto one grid in one CRS (the first raster's by default): tiles of
``tile_size_m`` starting at the top-left corner of the area all rasters cover, each sensor sampled at its own
``gsd`` from the sensor table (a context sensor, MODIS, as one pixel per tile). Pixel ``(r, c)`` of every sensor's tile
therefore covers the same ground whatever the source CRS or resolution.

Resampling defaults to ``nearest`` where a sensor is sampled at the source resolution or finer (no
invented values) and ``average`` where it is coarser; labels use ``nearest``/``mode``.

Bands: a raster's bands are the sensor's bands in table order unless ``bands[sensor]`` names them (in
file order), e.g. ``bands={"l8": ["B2", "B3", "B4"]}`` for a 3-band Landsat 8 B2,B3,B4 file; the tiles
then hold those bands only (``TileDataset(missing_bands="fill")`` inserts the others).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from model.sensors import Sensor, get_sensor
from scene.grid import Tile, TileGrid, common_area
from scene.layers import Layer, open_layer, read_layer, resampling_for, source_res
from training.data.dates import day_of_year, parse_product_date, to_date
from training.data.format import LabelSpec, check_split
from training.data.tilefile import Georef, TileSensor, check_bands
from training.data.writer import TileWriter

PathLike = str | os.PathLike[str]
DateLike = dt.date | str
# A single-date sensor: one path. A time series: one path (date read from its name), or a list of
# paths (dates read from their names) and/or (path, date) pairs, one multi-band GeoTIFF per date.
RasterSource = PathLike | Sequence[PathLike | tuple[PathLike, DateLike]]
SplitRule = str | Mapping[str, float] | Callable[[int, int], str]


def _sources(sensor: Sensor, source: RasterSource) -> list[tuple[Path, dt.date | None]]:
    items = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    if not items:
        raise ValueError(f"rasters[{sensor.name!r}]: empty list")
    if not sensor.time_series:
        if len(items) != 1 or isinstance(items[0], tuple):
            raise ValueError(f"rasters[{sensor.name!r}]: a single-date sensor takes exactly one path")
        return [(Path(items[0]), None)]  # type: ignore[arg-type]
    out = []
    for it in items:
        if isinstance(it, tuple):
            path, date = it
            try:
                out.append((Path(path), to_date(date)))
            except ValueError as e:
                raise ValueError(f"rasters[{sensor.name!r}]: {path}: bad date {date!r} ({e})") from None
        else:
            try:
                out.append((Path(it), parse_product_date(Path(it).name)))
            except ValueError:
                raise ValueError(f"rasters[{sensor.name!r}]: {it}: no YYYYMMDD date in the file name; "
                                 f"pass (path, date) pairs") from None
    return sorted(out, key=lambda pd: pd[1])  # type: ignore[arg-type, return-value]


def _split_for(rule: SplitRule, row: int, col: int, rng: np.random.Generator) -> str:
    if isinstance(rule, str):
        return rule
    if callable(rule):
        return check_split(rule(row, col), f"split({row}, {col})")
    names, weights = list(rule), np.asarray(list(rule.values()), float)
    return names[int(rng.choice(len(names), p=weights / weights.sum()))]


def _band_order(sensor: Sensor, names: Sequence[str]) -> tuple[tuple[str, ...], np.ndarray]:
    """Table-ordered band names, and the permutation taking file order to table order."""
    unknown = [b for b in names if b not in sensor.bands]
    if unknown:
        raise ValueError(f"bands[{sensor.name!r}]: {unknown} are not {sensor.name} bands "
                         f"{list(sensor.bands)}")
    perm = np.argsort([sensor.bands.index(b) for b in names], kind="stable")
    ordered = check_bands(sensor, [names[i] for i in perm], f"bands[{sensor.name!r}]")
    return ordered, perm


def cut_tiles(rasters: Mapping[str, RasterSource], out_dir: PathLike, *, tile_size_m: float,
              crs: str | CRS | None = None, bounds: tuple[float, float, float, float] | None = None,
              bands: Mapping[str, Sequence[str]] | None = None, nodata: Mapping[str, float] | None = None,
              resampling: str | Mapping[str, str] | None = None, max_nodata: float = 0.0,
              labels: PathLike | None = None, classes: Sequence[str] | None = None,
              label_gsd: float | None = None, label_nodata: int = -1, min_labelled: float = 0.0,
              split: SplitRule = "train", seed: int = 0, name: str = "tiles",
              overwrite: bool = False) -> Path:
    """Cut co-registered tiles of ``tile_size_m`` metres from ``rasters`` (sensor name -> source).

    ``crs``: output CRS (default: the first raster's; must be in metres). ``bounds``: optional
    ``(left, bottom, right, top)`` in that CRS to restrict the area. ``nodata[sensor]``: the source
    value meaning "no data" where the file does not say. ``max_nodata``: largest fraction of nodata
    pixels a tile may hold — a single-date sensor over it skips the tile; a time-series date over it
    is dropped, and the tile is skipped if a series loses every date. ``labels``: a one-band integer
    raster of class indices (any CRS; its nodata becomes ``label_nodata``) cut at ``label_gsd``
    (default: the finest sensor gsd) as a segmentation mask; tiles with less than ``min_labelled``
    labelled pixels are skipped. ``split``: one split, fractions such as ``{"train": .8, "val": .2}``
    (drawn with ``seed``), or a function ``(row, col) -> split``. Returns the dataset directory.
    """
    if not rasters:
        raise ValueError("rasters: no sensor given")
    if not 0.0 <= max_nodata <= 1.0:
        raise ValueError(f"max_nodata: a fraction in [0, 1], got {max_nodata}")
    if isinstance(split, str):
        check_split(split)
    elif isinstance(split, Mapping):
        for s in split:
            check_split(s, "split")
    sensors = {s: get_sensor(s) for s in rasters}
    bands = dict(bands or {})
    for s in bands:
        if s not in sensors:
            raise ValueError(f"bands: {s!r} is not one of the rasters' sensors {list(sensors)}")
    band_names: dict[str, tuple[str, ...]] = {}
    file_order: dict[str, np.ndarray] = {}
    for s, names in bands.items():
        band_names[s], file_order[s] = _band_order(sensors[s], names)
    if labels is not None and not classes:
        raise ValueError("classes: required with labels (one name per class index)")
    with ExitStack() as stack:
        opened: list[tuple[Sensor, Path, dt.date | None, rasterio.DatasetReader]] = []
        for s, source in rasters.items():
            for path, date in _sources(sensors[s], source):
                try:
                    src = stack.enter_context(rasterio.open(path))
                except rasterio.errors.RasterioIOError as e:
                    raise ValueError(f"rasters[{s!r}]: cannot open {path} ({e})") from None
                if src.crs is None:
                    raise ValueError(f"rasters[{s!r}]: {path} has no CRS")
                want = len(bands[s]) if s in bands else sensors[s].channels
                if src.count != want:
                    hint = "" if s in bands else f"; name its bands with bands={{{s!r}: [...]}}"
                    raise ValueError(f"rasters[{s!r}]: {path} has {src.count} bands, expected {want}{hint}")
                opened.append((sensors[s], path, date, src))
        dst_crs = CRS.from_user_input(crs) if crs is not None else opened[0][3].crs
        if not dst_crs.is_projected:
            raise ValueError(f"crs: {dst_crs} is not projected in metres; pass crs='EPSG:...' "
                             f"(e.g. a UTM zone)")
        area = common_area([(f"rasters[{o[0].name!r}]: {o[1]}", o[3].crs, o[3].bounds) for o in opened], dst_crs,
                           bounds)
        grid = TileGrid.exact(dst_crs, area, tile_size_m)

        layers: list[Layer] = []
        for sensor, path, date, src in opened:
            px = tile_size_m if sensor.context else sensor.gsd
            if abs(tile_size_m / px - round(tile_size_m / px)) > 1e-6:
                raise ValueError(f"tile_size_m: {tile_size_m} m is not a whole number of {sensor.name} "
                                 f"pixels ({px} m)")
            method = resampling.get(sensor.name) if isinstance(resampling, Mapping) else resampling
            layers.append(open_layer(stack, src, sensor, path, None if date is None else (date,), grid, src.count,
                                     (nodata or {}).get(sensor.name), method, None))

        label_spec = label_layer = None
        if labels is not None:
            lsrc = stack.enter_context(rasterio.open(labels))
            if lsrc.count != 1 or lsrc.crs is None:
                raise ValueError(f"labels: {labels} must be one band with a CRS "
                                 f"(has {lsrc.count}, crs {lsrc.crs})")
            lgsd = label_gsd or min(s.gsd for s in sensors.values() if not s.context)
            lside = round(tile_size_m / lgsd)
            if abs(tile_size_m / lgsd - lside) > 1e-6:
                raise ValueError(f"label_gsd: {lgsd} m does not divide tile_size_m {tile_size_m} m")
            lheight, lwidth = grid.shape(lgsd)
            lvrt = stack.enter_context(WarpedVRT(
                lsrc, crs=dst_crs, transform=grid.transform(lgsd), width=lwidth, height=lheight,
                resampling=resampling_for(None, lgsd <= source_res(lsrc, dst_crs) * 1.001, label=True),
                src_nodata=lsrc.nodata, nodata=lsrc.nodata, add_alpha=lsrc.nodata is None))
            label_layer = (lvrt, lside)
            label_spec = LabelSpec("mask", tuple(classes or ()), nodata=label_nodata, gsd=lgsd)

        rng = np.random.default_rng(seed)
        with TileWriter(out_dir, name=name, tile_size_m=tile_size_m, sensors=tuple(sorted(sensors)),
                        label=label_spec, overwrite=overwrite) as writer:
            left, top = grid.left, grid.top
            for cell in grid.tiles():
                row, col = cell.row, cell.col
                tile_split = _split_for(split, row, col, rng)  # drawn for every cell: stable per seed
                tile = _cut_one(layers, cell, tile_size_m, left, top, dst_crs, max_nodata,
                                band_names, file_order)
                if tile is None:
                    continue
                mask = None
                georef = None
                if label_layer is not None:
                    mask, georef = _cut_label(label_layer, row, col, tile_size_m, left, top, dst_crs,
                                              label_nodata)
                    if (mask != label_nodata).mean() < min_labelled or (mask != label_nodata).sum() == 0:
                        continue
                writer.add(cell.id, tile, split=tile_split, label=mask,
                           label_georef=georef)
    return Path(out_dir)


def _tile_georef(crs: CRS, px: float, left: float, top: float, row: int, col: int, size: float) -> Georef:
    t = Affine(px, 0.0, left + col * size, 0.0, -px, top - row * size)
    return Georef(crs.to_wkt(), tuple(t)[:6])  # type: ignore[arg-type]


def _cut_one(layers: Sequence[Layer], cell: Tile, size: float, left: float, top: float, crs: CRS,
             max_nodata: float, band_names: Mapping[str, tuple[str, ...]],
             file_order: Mapping[str, np.ndarray]) -> dict[str, TileSensor] | None:
    row, col = cell.row, cell.col
    per_sensor: dict[str, list[tuple[np.ndarray, dt.date | None, float | None]]] = {}
    for layer in layers:
        stacked, valids = read_layer(layer, cell)
        data, valid = stacked[0], valids[0]
        frac_missing = 1.0 - valid.mean()
        if frac_missing > max_nodata:
            if not layer.sensor.time_series:
                return None
            continue  # drop this date only
        fill = layer.nodata
        if frac_missing > 0:
            fill = 0.0 if fill is None else fill
            data[:, ~valid] = np.asarray(fill).astype(data.dtype)
        per_sensor.setdefault(layer.sensor.name, []).append((data, layer.dates[0] if layer.dates else None, fill))
    out: dict[str, TileSensor] = {}
    for layer in layers:
        name = layer.sensor.name
        if name in out:
            continue
        got = per_sensor.get(name)
        if not got:
            return None  # every date of a time series was over the nodata limit
        px = size if layer.sensor.context else layer.sensor.gsd
        georef = _tile_georef(crs, px, left, top, row, col, size)
        fills = {f for _, _, f in got if f is not None}
        fill = fills.pop() if len(fills) == 1 else (0.0 if fills else None)
        sel = file_order.get(name)
        arrays = [a if sel is None else a[sel] for a, _, _ in got]
        if layer.sensor.time_series:
            dates = [d for _, d, _ in got]
            doy = np.asarray([day_of_year(d) for d in dates], np.int64)
            out[name] = TileSensor(np.stack(arrays), dates=doy,
                                   bands=band_names.get(name), georef=georef, nodata=fill,
                                   acquired=tuple(d.isoformat() for d in dates))
        else:
            out[name] = TileSensor(arrays[0], bands=band_names.get(name), georef=georef, nodata=fill)
    return out


def _cut_label(layer: tuple[WarpedVRT, int], row: int, col: int, size: float, left: float, top: float,
               crs: CRS, label_nodata: int) -> tuple[np.ndarray, Georef]:
    vrt, n = layer
    window = Window(col * n, row * n, n, n)
    mask = vrt.read(1, window=window).astype(np.int64)
    valid = vrt.read_masks(1, window=window) > 0
    mask[~valid] = label_nodata
    return mask, _tile_georef(crs, size / n, left, top, row, col, size)
