"""GeoTIFF in: the header is read by hand first, so a file claiming a huge raster is refused before
GDAL allocates or decompresses anything; then rasterio decodes it from memory (never from disk)."""

from __future__ import annotations

import struct
import warnings

import numpy as np
import rasterio
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.io import MemoryFile

from service.gateway.errors import LimitExceeded, MalformedRequest
from service.gateway.inputs.tile import Georef

_TAG_WIDTH, _TAG_HEIGHT, _TAG_SAMPLES = 256, 257, 277
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def is_tiff(blob: bytes) -> bool:
    return blob[:4] in TIFF_MAGICS


def tiff_dimensions(blob: bytes, field: str) -> tuple[int, int, int]:
    """``(width, height, samples_per_pixel)`` of the first image, from the TIFF/BigTIFF header alone."""
    if not is_tiff(blob):
        raise MalformedRequest(field, "not a TIFF file (bad magic bytes); send a GeoTIFF or a .npy file")
    e = "<" if blob[:2] == b"II" else ">"
    big = blob[2:4] in (b"+\x00", b"\x00+")
    try:
        if big:
            (offset,) = struct.unpack_from(e + "Q", blob, 8)
            (count,) = struct.unpack_from(e + "Q", blob, offset)
            entry, first = 20, offset + 8
        else:
            (offset,) = struct.unpack_from(e + "I", blob, 4)
            (count,) = struct.unpack_from(e + "H", blob, offset)
            entry, first = 12, offset + 2
        if count > 4096:
            raise MalformedRequest(field, f"corrupt TIFF: first directory claims {count} entries")
        values: dict[int, int] = {}
        for i in range(count):
            at = first + i * entry
            tag, kind = struct.unpack_from(e + "HH", blob, at)
            if tag in (_TAG_WIDTH, _TAG_HEIGHT, _TAG_SAMPLES):
                value_at = at + (12 if big else 8)
                fmt = {3: "H", 4: "I", 16: "Q"}.get(kind)
                if fmt is None:
                    raise MalformedRequest(field, f"corrupt TIFF: tag {tag} has type {kind}")
                (values[tag],) = struct.unpack_from(e + fmt, blob, value_at)
    except struct.error:
        raise MalformedRequest(field, "corrupt TIFF: header or first directory is truncated") from None
    if _TAG_WIDTH not in values or _TAG_HEIGHT not in values:
        raise MalformedRequest(field, "corrupt TIFF: no ImageWidth/ImageLength in the first directory")
    return values[_TAG_WIDTH], values[_TAG_HEIGHT], values.get(_TAG_SAMPLES, 1)


def read_geotiff(blob: bytes, field: str, max_pixels: int, max_bands: int) -> tuple[np.ndarray, Georef | None]:
    """``[bands, H, W]`` array and its georeference (None if the file has neither CRS nor transform)."""
    width, height, samples = tiff_dimensions(blob, field)
    if width * height > max_pixels:
        raise LimitExceeded("max_pixels_per_sensor", field,
                            f"TIFF header claims {width} x {height} = {width * height} pixels, at most {max_pixels}")
    if samples > max_bands:
        raise LimitExceeded("max_dates_per_series", field, f"TIFF header claims {samples} bands, at most {max_bands}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with MemoryFile(blob) as memfile, memfile.open() as src:
                if src.driver != "GTiff":
                    raise MalformedRequest(field, f"expected a GeoTIFF, GDAL read it as {src.driver}")
                if src.width * src.height > max_pixels or src.count > max_bands:
                    raise LimitExceeded("max_pixels_per_sensor", field,
                                        f"{src.width} x {src.height} x {src.count} exceeds the limits")
                data = src.read()
                georef = None
                if src.crs is not None or src.transform != Affine.identity():
                    georef = Georef(src.crs.to_wkt() if src.crs else None, src.transform, src.width, src.height)
    except RasterioError as exc:
        raise MalformedRequest(field, f"corrupt or unreadable TIFF: {exc}") from None
    return data, georef


def crs_equal(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a is b
    return rasterio.crs.CRS.from_user_input(a) == rasterio.crs.CRS.from_user_input(b)
