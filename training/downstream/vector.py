"""Labels from a vector file: rasterise labelled polygons onto a raster's grid (pyogrio + shapely)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from rasterio.features import rasterize
from rasterio.transform import Affine
from rasterio.warp import transform_geom

NODATA = -1


def read_polygons(path: str | Path, field: str, layer: str | int | None = None) -> tuple[list[dict], list[str], str]:
    """GeoJSON-like geometries, their ``field`` values (as str) and the layer's CRS."""
    import pyogrio
    import shapely

    try:
        meta, _fids, geoms, fields = pyogrio.raw.read(str(path), layer=layer, columns=[field])
    except Exception as e:  # pyogrio raises several types; the message says what is wrong with the file
        raise ValueError(f"{path}: cannot read field {field!r} ({e})") from e
    if meta.get("crs") is None:
        raise ValueError(f"{path}: the layer has no CRS")
    values = [str(v) for v in fields[0]]
    shapes = [shapely.from_wkb(g).__geo_interface__ for g in geoms]
    return shapes, values, str(meta["crs"])


def rasterize_labels(vector: str | Path, raster: str | Path, field: str, out_path: str | Path, *,
                     gsd: float | None = None, classes: Sequence[str] | None = None,
                     layer: str | int | None = None) -> tuple[Path, tuple[str, ...], dict[str, int]]:
    """Burn each polygon's class index (``classes.index(field value)``; default classes: the values in
    order of first appearance) onto ``raster``'s extent and CRS at ``gsd`` metres (default: the raster's
    resolution); unlabelled pixels are ``-1``. Returns the label GeoTIFF, the classes and the labelled
    pixel count per class (a class whose polygons all fall outside the raster counts 0)."""
    shapes, values, crs = read_polygons(vector, field, layer)
    class_list = tuple(classes) if classes is not None else tuple(dict.fromkeys(values))
    unknown = sorted(set(values) - set(class_list))
    if unknown:
        raise ValueError(f"{vector}: values {unknown} of {field!r} are not in the classes {list(class_list)}")
    with rasterio.open(raster) as src:
        if src.crs is None:
            raise ValueError(f"{raster}: no CRS")
        res = gsd or src.res[0]
        left, bottom, right, top = src.bounds
        width, height = round((right - left) / res), round((top - bottom) / res)
        transform = Affine(res, 0.0, left, 0.0, -res, top)
        dst_crs = src.crs
    pairs = [(transform_geom(crs, dst_crs, s), class_list.index(v)) for s, v in zip(shapes, values, strict=True)]
    mask = rasterize(pairs, out_shape=(height, width), transform=transform, fill=NODATA, dtype="int16")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(out_path, "w", driver="GTiff", width=width, height=height, count=1, dtype="int16",
                       crs=dst_crs, transform=transform, nodata=NODATA) as dst:
        dst.write(mask, 1)
    counts = {c: int((mask == i).sum()) for i, c in enumerate(class_list)}
    return out_path, class_list, counts


def labelled_fraction(mask: np.ndarray) -> float:
    return float((mask != NODATA).mean())
