"""TreeSatAI-TS adapter: read its aerial GeoTIFF + HDF5 time series and convert them to the tile format.

Source layout (per tile ``<name>``, anywhere under the source directory):

* ``<name>.tif``: aerial orthophoto, 4 bands x 304 x 304, uint8, 0.2 m, EPSG:25832 (60.8 m square).
  Bands are kept in file order (the reference never reorders them; reference doc §3.1).
* ``<name>.h5``: ``sen-2-data (T,10,6,6)``, ``sen-1-asc-data (T,2,6,6)``, ``sen-1-des-data (T,2,6,6)``,
  float32, with ``*-products`` holding the product names that carry the acquisition dates.

Conversion: the aerial image is centre-cropped to 300 x 300 px (60 m, the official demo's
``[2:302, 2:302]``) to cover the 6 x 6 px, 10 m series; dates become 1-based day of year and every
series is sorted chronologically. ``s1-asc`` is VV, VH as stored; the optional ``s1`` sensor is
ascending VV, VH plus VV/VH (as the demo feeds it). Descending S1 has no sensor in the table and is
not converted. The label is the species from the file name (``Abies_alba_1_1005_WEFL_NLF`` ->
``Abies_alba``). The HDF5 series carry no georeference, so only the aerial file gets one.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np
import rasterio
from rasterio.windows import Window

from model.sensors import get_sensor
from training.data.dates import day_of_year, parse_product_date
from training.data.format import LabelSpec, check_split
from training.data.tilefile import Georef, TileSensor, expected_side
from training.data.writer import TileWriter

TILE_SIZE_M = 60.0
DEFAULT_SENSORS = ("aerial", "s1-asc", "s2")
# (data dataset, products dataset) per sensor; "s1" is derived from the ascending pass.
_H5_KEYS = {"s2": ("sen-2-data", "sen-2-products"), "s1-asc": ("sen-1-asc-data", "sen-1-asc-products"),
            "s1": ("sen-1-asc-data", "sen-1-asc-products")}
_SPLIT_LISTS = {"train": "train_filenames.lst", "val": "val_filenames.lst", "test": "test_filenames.lst"}


def species_from_name(name: str) -> str:
    """``Abies_alba_1_1005_WEFL_NLF`` -> ``Abies_alba``: the leading non-numeric ``_`` fields."""
    fields = Path(name).stem.split("_")
    head: list[str] = []
    for f in fields:
        if f.isdigit():
            break
        head.append(f)
    if not head or len(head) == len(fields):
        raise ValueError(f"{name}: cannot read a species from the file name "
                         f"(expected <Genus>_<species>_<n>_...)")
    return "_".join(head)


def read_aerial(path: str | os.PathLike[str], tile_size_m: float = TILE_SIZE_M) -> TileSensor:
    """The centre ``tile_size_m`` square of a TreeSatAI aerial GeoTIFF, with its georeference."""
    side = expected_side(get_sensor("aerial"), tile_size_m)
    aerial = get_sensor("aerial")
    with rasterio.open(path) as src:
        if src.count != aerial.channels:
            raise ValueError(f"{path}: aerial has {src.count} bands, expected {aerial.channels}")
        if src.height < side or src.width < side:
            raise ValueError(f"{path}: aerial is {src.height}x{src.width} px, need at least {side}x{side}")
        if abs(abs(src.transform.a) - aerial.gsd) > 1e-3:
            raise ValueError(f"{path}: aerial pixel is {src.transform.a} m, expected {aerial.gsd} m")
        row, col = (src.height - side) // 2, (src.width - side) // 2
        window = Window(col, row, side, side)
        data = src.read(window=window)
        t = src.transform  # shifted by hand: rasterio's window_transform uses a deprecated Affine operator
        shifted = (t.a, t.b, t.c + col * t.a + row * t.b, t.d, t.e, t.f + col * t.d + row * t.e)
        georef = Georef(src.crs.to_wkt(), shifted) if src.crs is not None else None
    return TileSensor(data=data, georef=georef)


def read_series(h5: h5py.File, sensor: str, path: str | os.PathLike[str]) -> TileSensor:
    """One time series from a TreeSatAI-TS HDF5 file, sorted by date, dates as 1-based day of year."""
    data_key, products_key = _H5_KEYS[sensor]
    for key in (data_key, products_key):
        if key not in h5:
            raise ValueError(f"{path}: no {key!r} dataset (needed for {sensor!r}); it has {sorted(h5)}")
    data = np.asarray(h5[data_key][()], dtype=np.float32)
    products = list(h5[products_key][()])
    if data.ndim != 4 or data.shape[0] != len(products):
        raise ValueError(f"{path}: {data_key!r} has shape {list(data.shape)} but {products_key!r} "
                         f"names {len(products)} products (expected [T, C, H, W] with one product per date)")
    try:
        dates = [parse_product_date(p) for p in products]
    except ValueError as e:
        raise ValueError(f"{path}: {products_key!r}: {e}") from None
    order = sorted(range(len(dates)), key=lambda i: dates[i])  # stable: equal dates keep file order
    data = data[order]
    if sensor == "s1":
        vv, vh = data[:, 0:1], data[:, 1:2]
        data = np.concatenate([vv, vh, np.clip(vv / (vh + 1e-10), -1e4, 1e4)], axis=1)
    return TileSensor(data=data, dates=np.asarray([day_of_year(dates[i]) for i in order], np.int64),
                      acquired=tuple(dates[i].isoformat() for i in order))


def read_treesatai_tile(tif: str | os.PathLike[str], h5_path: str | os.PathLike[str],
                        sensors: Sequence[str] = DEFAULT_SENSORS) -> dict[str, TileSensor]:
    out: dict[str, TileSensor] = {}
    for s in sensors:
        if s != "aerial" and s not in _H5_KEYS:
            raise ValueError(f"sensors: {s!r} is not in TreeSatAI-TS; choose among aerial, "
                             f"{', '.join(_H5_KEYS)}")
    if "aerial" in sensors:
        out["aerial"] = read_aerial(tif)
    series = [s for s in sensors if s != "aerial"]
    if series:
        with h5py.File(h5_path, "r") as h5:
            for s in series:
                out[s] = read_series(h5, s, h5_path)
    return {s: out[s] for s in sensors}


def _find(src: Path, suffix: str) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for p in sorted(src.rglob(f"*{suffix}")):
        if p.stem in found:
            raise ValueError(f"{src}: two {suffix} files named {p.stem}: {found[p.stem]} and {p}")
        found[p.stem] = p
    return found


def _split_lists(src: Path) -> dict[str, str] | None:
    """TreeSatAI ships ``train_filenames.lst``/``test_filenames.lst``; use them when present."""
    mapping: dict[str, str] = {}
    for split, fname in _SPLIT_LISTS.items():
        for lst in src.rglob(fname):
            for line in lst.read_text().split():
                mapping[Path(line).stem] = split
    return mapping or None


def convert_treesatai(src_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
                      split: str | Mapping[str, str] | None = None, sensors: Sequence[str] = DEFAULT_SENSORS,
                      classes: Sequence[str] | None = None, overwrite: bool = False) -> Path:
    """Convert every ``<name>.tif`` + ``<name>.h5`` pair under ``src_dir`` into a tile dataset.

    ``split``: one split for every tile, a mapping tile name -> split, or None to read TreeSatAI's
    ``*_filenames.lst`` lists (tiles in none of them, or no lists at all: "train"). ``classes``: the
    class list (default: the species found, sorted). Returns the dataset directory.
    """
    src, out = Path(src_dir), Path(out_dir)
    if not src.is_dir():
        raise ValueError(f"src_dir: {src} is not a directory")
    tifs, h5s = _find(src, ".tif"), _find(src, ".h5")
    names = sorted(tifs) if "aerial" in sensors else sorted(h5s)
    if not names:
        raise ValueError(f"src_dir: no TreeSatAI-TS tiles (<name>.tif + <name>.h5) under {src}")
    needs_h5 = any(s != "aerial" for s in sensors)
    missing = [n for n in names if needs_h5 and n not in h5s]
    if missing:
        raise ValueError(f"{src}: {len(missing)} tiles have no .h5 time series, e.g. {missing[:3]}")
    species = {n: species_from_name(n) for n in names}
    class_list = tuple(classes) if classes is not None else tuple(sorted(set(species.values())))
    unknown = sorted(set(species.values()) - set(class_list))
    if unknown:
        raise ValueError(f"classes: species {unknown} found in {src} are not in the given classes")
    if isinstance(split, str):
        check_split(split)
    lists = _split_lists(src) if split is None else None
    if split is None and lists is None:
        warnings.warn(f"{src}: no split given and no *_filenames.lst found; every tile goes to 'train'",
                      stacklevel=2)
    with TileWriter(out, name="treesatai-ts", tile_size_m=TILE_SIZE_M, sensors=tuple(sorted(sensors)),
                    label=LabelSpec("class", class_list), overwrite=overwrite) as writer:
        for n in names:
            if isinstance(split, str):
                tile_split = split
            elif split is not None:
                tile_split = split.get(n, "train")
            else:
                tile_split = (lists or {}).get(n, "train")
            arrays = read_treesatai_tile(tifs.get(n, Path(n + ".tif")), h5s.get(n, Path(n + ".h5")), sensors)
            writer.add(n, arrays, split=tile_split, label=class_list.index(species[n]))
    return out
