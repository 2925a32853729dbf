"""Every sensor of a tile read at its own GSD: each file warped (``WarpedVRT``, read window by window, so rasters
larger than memory are fine) onto the grid at the sensor table's pixel size. Pixel ``(r, c)`` of every sensor's
tile covers the same ground whatever the source CRS or resolution; a context sensor (MODIS) is one pixel per tile.

Resampling: ``nearest`` where a sensor is sampled at the source resolution or finer (no invented values),
``average`` where coarser. Validity: a pixel of a date is valid when every band of that date is (the file's
nodata value, a given ``nodata``, or its mask/alpha)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from xml.sax.saxutils import escape

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, Resampling
from rasterio.io import DatasetReader
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from model.sensors import SENSORS, Sensor
from scene.errors import SceneError
from scene.grid import Tile, TileGrid
from scene.sources import SensorSource

# Sampling a sensor this many times finer than its file invents the detail a model reads as texture; coarser
# than this many times reads that many squared source pixels per model pixel.
MAX_UPSAMPLE, MAX_DOWNSAMPLE = 10.0, 50.0


@dataclass
class Layer:
    """One file of one sensor, warped onto the grid at the sensor's pixel size."""

    sensor: Sensor
    path: Path
    dates: tuple[dt.date, ...] | None
    vrt: WarpedVRT
    count: int  # bands in the file
    channels: int  # bands per date
    nodata: float | None
    px: float  # metres per pixel on the grid
    order: np.ndarray | None  # file band order -> table order (None: already in table order)
    mask: WarpedVRT | None = None  # the file's valid mask on the same grid (nearest), one band per date


@dataclass
class SensorRead:
    data: np.ndarray  # [C, n, n] or [T, C, n, n]; bands in table order (``bands``), raw values
    valid: np.ndarray  # bool, [1, n, n] or [T, 1, n, n]; True = a real value for every band
    dates: tuple[dt.date, ...] | None
    bands: tuple[str, ...]
    transform: Affine  # of this sensor's tile pixels
    crs: CRS


def resampling_for(name: str | Resampling | None, finer: bool, label: bool = False) -> Resampling:
    if name is not None:
        try:
            return name if isinstance(name, Resampling) else Resampling[name]
        except KeyError:
            raise SceneError("resampling", f"unknown method {name!r}; e.g. nearest, bilinear, average") from None
    if label:
        return Resampling.nearest if finer else Resampling.mode
    return Resampling.nearest if finer else Resampling.average


def source_res(src: DatasetReader, crs: CRS) -> float:
    """The file's pixel size in metres of ``crs`` (the finer axis)."""
    b = transform_bounds(src.crs, crs, *src.bounds, densify_pts=21)
    return min((b[2] - b[0]) / src.width, (b[3] - b[1]) / src.height)


def sensor_px(sensor: Sensor, grid: TileGrid) -> float:
    """The pixel size a sensor is read at: its GSD; a context sensor one pixel per tile (or the coarsest pixel
    that the grid's tile origins fall on, averaged to one per tile)."""
    if not sensor.context:
        return sensor.gsd
    for k in range(1, 65):
        if grid.aligned(grid.tile_m / k):
            return grid.tile_m / k
    raise SceneError(f"sensor.{sensor.name}", "the tile grid's offsets fall on no pixel grid for a context sensor")


def check_resolution(sensor: Sensor, path: Path, res: float) -> None:
    if sensor.context:
        return
    if res > sensor.gsd * MAX_UPSAMPLE:
        raise SceneError(f"sensor.{sensor.name}", f"{path} has {res:.3g} m pixels but {sensor.name} is read at "
                                                  f"{sensor.gsd:g} m: more than {MAX_UPSAMPLE:g}x finer than the file "
                                                  f"would invent detail; is it the right sensor?")
    if res * MAX_DOWNSAMPLE < sensor.gsd:
        raise SceneError(f"sensor.{sensor.name}", f"{path} has {res:.3g} m pixels but {sensor.name} is read at "
                                                  f"{sensor.gsd:g} m: over {MAX_DOWNSAMPLE:g}x coarser; resample it "
                                                  f"first (gdal_translate -tr) or pick the right sensor")


def band_order(sensor: Sensor, names: tuple[str, ...] | None) -> tuple[tuple[str, ...], np.ndarray | None]:
    """Table-ordered band names and the permutation from file order (None when already in table order)."""
    if names is None:
        return sensor.bands, None
    perm = np.argsort([sensor.bands.index(b) for b in names], kind="stable")
    ordered = tuple(names[i] for i in perm)
    return ordered, None if (perm == np.arange(len(perm))).all() else perm


def without_alpha(src: DatasetReader) -> str:
    """A VRT of ``src`` with every band's colour interpretation "gray": a file that calls a data band alpha (the
    TreeSatAI aerial tiles say so of their NIR band) would otherwise have GDAL mask pixels by that band."""
    gt = src.transform.to_gdal()
    dtype = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
             "int32": "Int32", "float32": "Float32", "float64": "Float64"}[src.dtypes[0]]
    bands = "".join(
        f'<VRTRasterBand dataType="{dtype}" band="{i}"><ColorInterp>Gray</ColorInterp>'
        f"<SimpleSource><SourceFilename>{escape(str(src.name))}</SourceFilename><SourceBand>{i}</SourceBand>"
        f"</SimpleSource></VRTRasterBand>" for i in src.indexes)
    return (f'<VRTDataset rasterXSize="{src.width}" rasterYSize="{src.height}"><SRS>{escape(src.crs.to_wkt())}</SRS>'
            f"<GeoTransform>{', '.join(repr(v) for v in gt)}</GeoTransform>{bands}</VRTDataset>")


def open_source(stack: ExitStack, path: Path) -> DatasetReader:
    """The file, opened; through ``without_alpha`` when it declares an alpha band."""
    src = stack.enter_context(rasterio.open(path))
    if ColorInterp.alpha in src.colorinterp and len(set(src.dtypes)) == 1:
        src = stack.enter_context(rasterio.open(without_alpha(src)))
    return src


def open_layer(stack: ExitStack, src: DatasetReader, sensor: Sensor, path: Path, dates: tuple[dt.date, ...] | None,
               grid: TileGrid, channels: int, nodata: float | None, resampling: str | Resampling | None,
               order: np.ndarray | None) -> Layer:
    px = sensor_px(sensor, grid)
    height, width = grid.shape(px)
    src_nodata = nodata if nodata is not None else src.nodata
    vrt = stack.enter_context(WarpedVRT(
        src, crs=grid.crs, transform=grid.transform(px), width=width, height=height,
        resampling=resampling_for(resampling, px <= source_res(src, grid.crs) * 1.001),
        src_nodata=src_nodata, nodata=src_nodata, add_alpha=src_nodata is None))
    return Layer(sensor, path, dates, vrt, src.count, channels, src_nodata, px, order)


def read_layer(layer: Layer, tile: Tile) -> tuple[np.ndarray, np.ndarray]:
    """Data ``[T, C, n, n]`` in file band order and validity ``[T, n, n]`` of one tile (T = dates in the file, 1
    for a single-date file)."""
    n = round(tile_px(layer, tile))
    window = Window(round(tile.x0 / layer.px), round(tile.y0 / layer.px), n, n)
    bands = list(range(1, layer.count + 1))
    data = layer.vrt.read(bands, window=window)
    masks = layer.vrt.read_masks(bands, window=window) > 0
    t = layer.count // layer.channels
    data = data.reshape(t, layer.channels, n, n)
    valid = masks.reshape(t, layer.channels, n, n).all(axis=1)
    if layer.mask is not None:  # a cloud / valid mask: nonzero and not its own nodata
        dates = list(range(1, t + 1))
        clear = layer.mask.read(dates, window=window)
        valid &= (clear != 0) & (layer.mask.read_masks(dates, window=window) > 0)
    return data, valid


def tile_px(layer: Layer, tile: Tile) -> float:
    return (tile.bounds[2] - tile.bounds[0]) / layer.px


class SceneReader:
    """The files of ``sources`` warped onto ``grid``; ``read(tile)`` gives each sensor's tile. A context manager
    (the files stay open while it is)."""

    def __init__(self, sources: Mapping[str, SensorSource], grid: TileGrid,
                 resampling: str | Mapping[str, str] | None = None, check_res: bool = True) -> None:
        self.sources, self.grid = dict(sources), grid
        self._stack = ExitStack()
        self.layers: list[Layer] = []
        self.bands: dict[str, tuple[str, ...]] = {}
        try:
            for name, source in self.sources.items():
                sensor = SENSORS[name]
                self.bands[name], order = band_order(sensor, source.bands)
                method = resampling.get(name) if isinstance(resampling, Mapping) else resampling
                for i, f in enumerate(source.files):
                    src = open_source(self._stack, f.path)
                    if check_res:
                        check_resolution(sensor, f.path, source_res(src, grid.crs))
                    layer = open_layer(self._stack, src, sensor, f.path, f.dates, grid, len(source.band_names),
                                       source.nodata, method, order)
                    if source.masks is not None:
                        layer.mask = self._mask(source.masks[i], layer)
                    self.layers.append(layer)
        except BaseException:
            self._stack.close()
            raise

    def _mask(self, path: Path, layer: Layer) -> WarpedVRT:
        src = self._stack.enter_context(rasterio.open(path))
        height, width = self.grid.shape(layer.px)
        return self._stack.enter_context(WarpedVRT(
            src, crs=self.grid.crs, transform=self.grid.transform(layer.px), width=width, height=height,
            resampling=Resampling.nearest, src_nodata=src.nodata, nodata=src.nodata, add_alpha=src.nodata is None))

    def __enter__(self) -> SceneReader:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()

    def read(self, tile: Tile) -> dict[str, SensorRead]:
        parts: dict[str, list[tuple[np.ndarray, np.ndarray, Layer]]] = {}
        for layer in self.layers:
            data, valid = read_layer(layer, tile)
            if layer.order is not None:
                data = data[:, layer.order]
            parts.setdefault(layer.sensor.name, []).append((data, valid, layer))
        out: dict[str, SensorRead] = {}
        for name, got in parts.items():
            sensor, layer = SENSORS[name], got[0][2]
            data = np.concatenate([d for d, _, _ in got])
            valid = np.concatenate([v for _, v, _ in got])[:, None]
            if sensor.context:  # one pixel per tile: the mean of the valid pixels
                data, valid = _one_pixel(data, valid)
            px = (tile.bounds[2] - tile.bounds[0]) / data.shape[-1]
            transform = Affine(px, 0.0, tile.bounds[0], 0.0, -px, tile.bounds[3])
            dates = tuple(d for _, _, lay in got for d in (lay.dates or ())) if sensor.time_series else None
            if not sensor.time_series:
                data, valid = data[0], valid[0]
            elif dates:
                order = sorted(range(len(dates)), key=lambda i: dates[i])  # type: ignore[index]
                data, valid, dates = data[order], valid[order], tuple(dates[i] for i in order)
            out[name] = SensorRead(data, valid, dates, self.bands[name], transform, self.grid.crs)
        return out


def _one_pixel(data: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = valid.astype(np.float64)  # [T, 1, n, n]
    count = v.sum(axis=(-2, -1), keepdims=True)
    mean = (data * v).sum(axis=(-2, -1), keepdims=True) / np.maximum(count, 1)
    return mean.astype(data.dtype if data.dtype.kind == "f" else np.float32), count > 0
