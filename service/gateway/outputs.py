"""Responses: embeddings and masks as JSON (base64 arrays), ``.npy``, ``.npz`` or GeoTIFF.

GeoTIFF masks keep the input's CRS and transform (resampled to the mask grid) and declare a nodata
value outside the class range: 255 for up to 255 classes (uint8), else 65535 (uint16).
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import numpy as np
from fastapi.responses import JSONResponse, Response
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import MemoryFile

from service.gateway.errors import InputError, NotAcceptable
from service.gateway.inputs.arrays import to_base64, to_npy, to_npz
from service.gateway.inputs.tile import Georef

MEDIA = {"json": "application/json", "npy": "application/x-npy", "npz": "application/x-npz",
         "geotiff": "image/tiff"}
_BY_MEDIA = {v: k for k, v in MEDIA.items()} | {"application/zip": "npz", "image/geotiff": "geotiff"}


def choose_format(explicit: str | None, accept: str | None) -> str:
    """``format`` wins; else the first acceptable type of the Accept header; else JSON."""
    if explicit:
        return explicit
    if not accept:
        return "json"
    for part in accept.split(","):
        media = part.split(";")[0].strip().lower()
        if media in _BY_MEDIA:
            return _BY_MEDIA[media]
        if media in ("*/*", "application/*"):
            return "json"
    raise NotAcceptable("accept", f"{accept[:100]!r}: can answer {', '.join(MEDIA.values())}")


def check_format(fmt: str, n_tiles: int, geotiff_ok: bool, why: str = "") -> None:
    """Refuse impossible encodings before any work is queued."""
    if fmt == "geotiff" and n_tiles != 1:
        raise InputError("format", f"geotiff answers one tile; this request has {n_tiles}")
    if fmt == "geotiff" and not geotiff_ok:
        raise InputError("format", f"geotiff cannot hold {why}; use json, npy or npz")


def stack(arrays: list[np.ndarray], field: str) -> np.ndarray:
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise InputError("format", f"npy/npz stack the tiles' {field}s, but their shapes differ: {sorted(shapes)}")
    return np.stack(arrays)


def class_map(probabilities: np.ndarray) -> tuple[np.ndarray, int]:
    """Argmax over classes (axis 0) and the nodata value that no class can take."""
    k = probabilities.shape[0]
    dtype, nodata = (np.uint8, 255) if k <= 255 else (np.uint16, 65535)
    return probabilities.argmax(axis=0).astype(dtype), nodata


def geotiff(bands: np.ndarray, georef: Georef | None, nodata: float | None = None,
            descriptions: list[str] | None = None, tags: dict[str, str] | None = None,
            colormap: dict[int, tuple[int, int, int, int]] | None = None) -> bytes:
    """``[bands, H, W]`` as a deflate-compressed GeoTIFF in memory."""
    count, height, width = bands.shape
    profile: dict[str, Any] = {"driver": "GTiff", "count": count, "height": height, "width": width,
                               "dtype": bands.dtype.name, "compress": "deflate", "nodata": nodata}
    if georef is not None:
        profile.update(transform=georef.transform, crs=georef.crs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with MemoryFile() as memfile:
            with memfile.open(**profile) as dst:
                dst.write(bands)
                for i, d in enumerate(descriptions or [], start=1):
                    dst.set_band_description(i, d)
                if tags:
                    dst.update_tags(**tags)
                if colormap:
                    dst.write_colormap(1, colormap)
            return memfile.read()


def binary(fmt: str, payload: bytes | dict[str, np.ndarray] | np.ndarray, meta: dict[str, Any]) -> Response:
    if fmt == "npz":
        assert isinstance(payload, dict)
        content = to_npz(payload)
    elif fmt == "npy":
        assert isinstance(payload, np.ndarray)
        content = to_npy(payload)
    else:
        assert isinstance(payload, bytes)
        content = payload
    return Response(content, media_type=MEDIA[fmt], headers={"X-AnySat-Meta": json.dumps(meta)})


def json_response(body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body)


def encode_array(array: np.ndarray) -> dict[str, object]:
    return to_base64(array)
