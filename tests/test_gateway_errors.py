"""Malformed requests, table-driven: each gets the right 4xx and a message naming the field or limit.
Never a 5xx, never a hang (every call has a timeout), and the worker keeps serving afterwards. Last, the one
server-side fault a worker reports per configuration: a graph it cannot build or load (503)."""

from __future__ import annotations

import base64
import gzip
import io
import json
import math
import re
import struct
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import rasterio
from affine import Affine
from gateway_fixtures import SEG_HEAD, Service, WorkerPool, serving, wait_ready
from rasterio.io import MemoryFile

from model import create_model
from service.gateway.app import create_app
from service.gateway.settings import GatewaySettings
from service.runtime.export import ExportCache
from service.runtime.runner import ExportedBackend, ModelRunner

CRS = "EPSG:32632"


def arr(shape: tuple[int, ...], dtype: str = "float32", fill: float = 1.0) -> dict[str, Any]:
    data = base64.b64encode(np.full(shape, fill, dtype).tobytes()).decode()
    return {"dtype": dtype, "shape": list(shape), "data": data}


def s2(t: int = 2, **extra: Any) -> dict[str, Any]:
    return {**arr((t, 10, 6, 6), fill=3000.0), "dates": list(range(10, 10 + 10 * t, 10))[:t], **extra}


def body(tiles: list[dict[str, Any]] | None = None, **options: Any) -> dict[str, Any]:
    return {"patch_size": 20, "tiles": tiles if tiles is not None else [{"s2": s2()}], **options}


def tif(bands: np.ndarray, x0: float = 500000.0, y0: float = 5000000.0, res: float = 10.0, crs: str = CRS) -> bytes:
    with MemoryFile() as mf:
        with mf.open(driver="GTiff", count=bands.shape[0], height=bands.shape[1], width=bands.shape[2],
                     dtype=bands.dtype.name, crs=crs, transform=Affine(res, 0, x0, 0, -res, y0)) as dst:
            dst.write(bands)
        return mf.read()


def huge_tiff_header(side: int = 100_000) -> bytes:
    """A classic little-endian TIFF whose only directory claims side x side pixels of uint8 in one strip (and holds
    no data): the tags a reader needs (size, bits, compression, photometric, strips), nothing else."""
    entries = [(256, 4, 1, side), (257, 4, 1, side), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 0), (277, 3, 1, 1), (278, 4, 1, side), (279, 4, 1, 0)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0\0\0\0"
    return b"II*\x00" + struct.pack("<I", 8) + ifd


S2_TIF = tif(np.full((20, 6, 6), 3000, np.float32))
AERIAL_TIF = tif(np.full((4, 300, 300), 100, np.uint8), res=0.2)


def _npy_header(shape: tuple[int, ...], dtype: str = "<f4") -> bytes:
    """A .npy v1.0 header claiming ``shape`` (no data follows)."""
    text = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    text += b" " * (63 - (10 + len(text)) % 64) + b"\n"
    return len(text).to_bytes(2, "little") + text


def npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


# (id, request kwargs for httpx, expected status, text that must appear in the error)
CASES: list[tuple[str, dict[str, Any], int, str]] = [
    ("malformed json", {"content": b'{"tiles": [', "headers": {"content-type": "application/json"}}, 400, "body"),
    ("json not an object", {"json": [1, 2]}, 422, "body"),
    ("missing tiles", {"json": {"patch_size": 20}}, 422, "tiles"),
    ("empty tiles", {"json": body([])}, 422, "tiles"),
    ("missing patch_size", {"json": {"tiles": [{"s2": s2()}]}}, 422, "patch_size"),
    ("unknown option", {"json": body(colour="red")}, 422, "colour"),
    ("unknown sensor", {"json": body([{"sentinel9": s2()}])}, 422, "sentinel9"),
    ("unsupported dtype", {"json": body([{"s2": {**s2(), "dtype": "complex64"}}])}, 422, "dtype"),
    ("bytes do not match shape", {"json": body([{"s2": {**s2(), "shape": [3, 10, 6, 6]}}])}, 400, "tiles[0].s2.data"),
    ("invalid base64", {"json": body([{"s2": {**s2(), "data": "!!!not base64"}}])}, 400, "data"),
    ("wrong rank", {"json": body([{"s2": {**arr((10, 6, 6)), "dates": [1]}}])}, 422, "[T, C, H, W]"),
    ("wrong band count", {"json": body([{"s2": {**arr((2, 3, 6, 6)), "dates": [1, 2]}}])}, 422, "10 bands"),
    ("missing dates", {"json": body([{"s2": {**arr((2, 10, 6, 6))}}])}, 422, "tiles[0].s2.dates"),
    ("dates count mismatch", {"json": body([{"s2": s2(2, dates=[5])}])}, 422, "tiles[0].s2.dates"),
    ("invalid date", {"json": body([{"s2": s2(2, dates=["2020-13-45", 4])}])}, 422, "ISO date"),
    ("day of year out of range", {"json": body([{"s2": s2(2, dates=[0, 400])}])}, 422, "1..366"),
    ("dates on a single-date sensor", {"json": body([{"aerial": {**arr((4, 300, 300), "uint8"), "dates": [3]}}])},
     422, "tiles[0].aerial.dates"),
    ("patch_size not a multiple of 10", {"json": body(patch_size=15)}, 422, "patch_size"),
    ("patch_size does not divide the tile", {"json": body(patch_size=40)}, 422, "patch_size"),
    ("unknown output", {"json": body(output="pixels")}, 422, "output"),
    ("output_modality not an input", {"json": body(output="dense", output_modality="s1")}, 422, "output_modality"),
    ("unknown statistics", {"json": body([{"l8": {**arr((1, 11, 6, 6)), "dates": [9]}}])}, 422, "normalize"),
    ("custom without stats", {"json": body(normalize="custom")}, 422, "stats"),
    ("custom stats wrong length", {"json": body(normalize="custom", stats={"s2": {"mean": [0], "std": [1]}})},
     422, "stats.s2"),
    ("NaN values", {"json": body([{"s2": {**arr((1, 10, 6, 6), fill=np.nan), "dates": [3]}}])}, 422, "NaN"),
    ("values overflow once normalised", {"json": body(normalize="custom", stats={"s2": {"mean": [0] * 10,
                                                                                 "std": [1e-40] * 10}})},
     422, "overflow"),
    ("extents differ in pixels", {"json": body([{"s2": s2(), "aerial": arr((4, 200, 200), "uint8")}])}, 422,
     "same ground"),
    ("too many tiles", {"json": body([{"s2": s2()}] * 9)}, 413, "max_tiles_per_request"),
    ("too many dates", {"json": body([{"s2": {**arr((1, 10, 6, 6)), "dates": [1] * 513}}])}, 413,
     "max_dates_per_series"),
    ("body too large", {"content": b"x" * (8 * 2**20 + 1), "headers": {"content-type": "application/json"}}, 413,
     "max_body_bytes"),
    ("unsupported content type", {"content": b"hello", "headers": {"content-type": "text/plain"}}, 415,
     "content-type"),
    ("not acceptable", {"json": body(), "headers": {"accept": "image/png"}}, 406, "accept"),
    ("geotiff cannot hold all", {"json": body(output="all", format="geotiff")}, 422, "format"),
    ("multipart without boundary", {"content": b"--xyz\r\n\r\nab", "headers": {"content-type": "multipart/form-data"}},
     400, "multipart"),
    ("multipart unknown field", {"files": {"s2": ("s2.tif", S2_TIF)}, "data": {"patch_size": "20", "colour": "r",
                                                                                 "s2_dates": "1,2"}}, 422, "colour"),
    ("multipart sensor as text", {"data": {"s2": "abc", "patch_size": "20"}, "files": {"s1": ("s1", b"x")}}, 422,
     "file part"),
    ("multipart not a tiff", {"files": {"s2": ("s2.tif", b"hello world")}, "data": {"patch_size": "20",
                                                                                     "s2_dates": "1,2"}}, 400, "s2"),
    ("multipart corrupt tiff", {"files": {"s2": ("s2.tif", S2_TIF[:300])}, "data": {"patch_size": "20",
                                                                                     "s2_dates": "1,2"}}, 400, "TIFF"),
    ("tiff header claims huge raster", {"files": {"s2": ("s2.tif", huge_tiff_header())},
                                        "data": {"patch_size": "20", "s2_dates": "1,2"}}, 413, "max_pixels_per_sensor"),
    ("tiff bands not dates x bands", {"files": {"s2": ("s2.tif", tif(np.ones((15, 6, 6), np.float32)))},
                                      "data": {"patch_size": "20", "s2_dates": "1"}}, 422, "multiple of the 10"),
    ("multipart missing dates", {"files": {"s2": ("s2.tif", S2_TIF)}, "data": {"patch_size": "20"}}, 422, "s2_dates"),
    ("extent off by more than half a pixel", {"files": {"aerial": ("a.tif", AERIAL_TIF),
                                                        "s2": ("s2.tif", tif(np.ones((20, 6, 6), np.float32),
                                                                             x0=500020.0))},
                                              "data": {"patch_size": "20", "s2_dates": "1,2"}}, 422, "off by 20 m"),
    ("different CRS", {"files": {"aerial": ("a.tif", AERIAL_TIF),
                                 "s2": ("s2.tif", tif(np.ones((20, 6, 6), np.float32), crs="EPSG:32633"))},
                       "data": {"patch_size": "20", "s2_dates": "1,2"}}, 422, "CRS"),
    ("pixel size not the sensor's", {"files": {"s2": ("s2.tif", tif(np.ones((20, 6, 6), np.float32), res=30.0))},
                                     "data": {"patch_size": "20", "s2_dates": "1,2"}}, 422, "resample"),
    ("corrupt npz", {"content": b"PK\x03\x04broken", "headers": {"content-type": "application/x-npz"},
                     "params": {"patch_size": "20"}}, 400, "npz"),
    ("npz unknown array", {"content": npz(foo=np.ones(3)), "headers": {"content-type": "application/x-npz"},
                           "params": {"patch_size": "20"}}, 422, "foo"),
]

# ---------------------------------------------------------------- numeric extremes, nesting, decompression bombs

NAN, INF, HUGE = float("nan"), float("inf"), 10**400
S2_FORM = {"patch_size": "20", "s2_dates": "1,2"}


def raw_json(obj: Any) -> dict[str, Any]:
    """A JSON body as Python writes it: NaN and Infinity literals included (httpx's ``json=`` refuses them)."""
    return {"content": json.dumps(obj).encode(), "headers": {"content-type": "application/json"}}


def nested(depth: int = 6000) -> bytes:
    return b"[" * depth + b"]" * depth


def sparse_tiff(dtype: str = "uint8", bands: int = 100, side: int = 2048) -> bytes:
    """A decompression bomb within every header limit: tiled, deflate, no tile written (GDAL SPARSE_OK), ~1.5 KB
    that claims ``side`` x ``side`` x ``bands`` values (2048 x 2048 x 100: 400 MiB of uint8, 1.6 GB of float32)."""
    with MemoryFile() as mf:
        with mf.open(driver="GTiff", count=bands, height=side, width=side, dtype=dtype, compress="deflate",
                     tiled=True, blockxsize=256, blockysize=256, sparse_ok=True, crs=CRS,
                     transform=Affine(10, 0, 500000, 0, -10, 5000000)):
            pass
        return mf.read()


def npz_bomb(shape: tuple[int, ...] = (10, 10, 2048, 2048)) -> bytes:
    """400 MiB of uint8 zeros as a ~400 KB deflated .npz member (streamed: the test never holds the 400 MiB)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open("s2.npy", "w", force_zip64=True) as member:
            member.write(np.lib.format.magic(1, 0) + _npy_header(shape, "|u1"))
            chunk = bytes(2**20)
            for _ in range(math.prod(shape) // len(chunk)):
                member.write(chunk)
        zf.writestr("s2_dates.npy", _npy_bytes(np.arange(1, 11)))
    return buf.getvalue()


def _npy_bytes(a: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, a)
    return out.getvalue()


def _stats(mean: Any = 0.0, std: Any = 1.0) -> dict[str, Any]:
    return raw_json(body(normalize="custom", stats={"s2": {"mean": [mean] * 10, "std": [std] * 10}}))


def _transform(values: list[Any]) -> dict[str, Any]:
    return raw_json(body([{"s2": s2(crs=CRS, transform=values)}]))


EXTREMES: list[tuple[str, Any]] = [("huge", HUGE), ("negative", -20), ("zero", 0), ("NaN", NAN),
                                   ("Infinity", INF), ("string", "twenty"), ("fraction", 20.5), ("list", [20]),
                                   ("bool", True)]

EXTREME_CASES: list[tuple[str, dict[str, Any], int, str]] = [
    *[(f"patch_size {name}", raw_json(body(patch_size=v)), 422, "patch_size") for name, v in EXTREMES],
    ("patch_size of 5000 digits", {"content": b'{"patch_size": ' + b"1" * 5000 + b', "tiles": []}',
                                   "headers": {"content-type": "application/json"}}, 400, "body"),
    *[(f"date {name}", raw_json(body([{"s2": s2(2, dates=[v, 20])}])), 422, "dates") for name, v in
      [("huge", HUGE), ("negative", -5), ("zero", 0), ("NaN", NAN), ("Infinity", INF), ("fraction", 1.5),
       ("bool", True), ("object", {"day": 1}), ("5000-digit string", "9" * 5000), ("unicode digits", "²")]],
    ("dates not a list", raw_json(body([{"s2": s2(2, dates="10,20")}])), 422, "dates"),
    ("shape huge", raw_json(body([{"s2": s2(shape=[HUGE, 10, 6, 6])}])), 413, "tiles[0].s2.shape"),
    ("shape negative", raw_json(body([{"s2": s2(shape=[-2, 10, 6, 6])}])), 400, "tiles[0].s2.shape"),
    ("shape zero", raw_json(body([{"s2": s2(shape=[0, 10, 6, 6])}])), 400, "tiles[0].s2.shape"),
    ("shape NaN", raw_json(body([{"s2": s2(shape=[NAN, 10, 6, 6])}])), 422, "shape"),
    ("shape fraction", raw_json(body([{"s2": s2(shape=[2.5, 10, 6, 6])}])), 422, "shape"),
    *[(f"stats mean {name}", _stats(mean=v), 422, "stats.s2.mean") for name, v in
      [("huge", 1e308), ("huge negative", -1e308), ("huge int", HUGE), ("NaN", NAN), ("Infinity", -INF),
       ("string", "zero")]],
    *[(f"stats std {name}", _stats(std=v), 422, "stats.s2.std") for name, v in
      [("zero", 0), ("negative", -1.0), ("huge", 1e308), ("NaN", NAN), ("Infinity", INF), ("string", "one")]],
    ("stats std too small for float32", _stats(std=1e-46), 422, "overflow"),
    *[(f"transform {name}", _transform(v), 422, "transform") for name, v in
      [("NaN", [NAN, 0, 5e5, 0, -10, 5e6]), ("Infinity", [10, 0, INF, 0, -10, 5e6]),
       ("huge int", [10, 0, HUGE, 0, -10, 5e6]), ("string", ["ten", 0, 5e5, 0, -10, 5e6]),
       ("five numbers", [10, 0, 5e5, 0, -10])]],
    ("transform huge pixel", _transform([1e308, 0, 5e5, 0, -1e308, 5e6]), 422, "transform"),
    ("transform large pixel", _transform([1e11, 0, 5e5, 0, -1e11, 5e6]), 422, "pixels are 1e+11 m"),
    ("transform zero", _transform([0, 0, 0, 0, 0, 0]), 422, "pixels are 0 m"),
    ("geotiff transform huge", {"files": {"s2": ("s2.tif", tif(np.ones((20, 6, 6), np.float32), res=1e300))},
                                "data": S2_FORM}, 422, "transform"),
    ("crs of 20,000 characters", raw_json(body([{"s2": s2(crs="x" * 20_000, transform=[10, 0, 0, 0, -10, 0])}])),
     422, "crs"),
    ("json nested 6000 deep", {"content": b'{"patch_size": 20, "tiles": ' + nested() + b"}",
                               "headers": {"content-type": "application/json"}}, 400, "body"),
    ("json that parses to too much", {"content": b'{"patch_size": 20, "tiles": [' + b"[]," * 2_500_000 + b"[]]}",
                                      "headers": {"content-type": "application/json"}}, 413,
     "max_decoded_bytes_per_request"),
    ("multipart patch_size of 5000 digits", {"files": {"s2": ("s2.tif", S2_TIF)},
                                             "data": {**S2_FORM, "patch_size": "9" * 5000}}, 422, "patch_size"),
    *[(f"multipart patch_size {v}", {"files": {"s2": ("s2.tif", S2_TIF)}, "data": {**S2_FORM, "patch_size": v}},
       422, "patch_size") for v in ("NaN", "-20", "0", "1e400", "20.5")],
    *[(f"multipart date {v}", {"files": {"s2": ("s2.tif", S2_TIF)}, "data": {**S2_FORM, "s2_dates": f"1,{v}"}},
       422, "s2_dates") for v in ("9" * 5000, "NaN", "-3", "0", "1.5", "²")],
    ("multipart stats nested 6000 deep", {"files": {"s2": ("s2.tif", S2_TIF)},
                                          "data": {**S2_FORM, "normalize": "custom", "stats": nested().decode()}},
     400, "stats"),
    ("multipart stats NaN", {"files": {"s2": ("s2.tif", S2_TIF)}, "data": {
        **S2_FORM, "normalize": "custom", "stats": json.dumps({"s2": {"mean": [NAN] * 10, "std": [1] * 10}})}},
     422, "stats.s2.mean"),
    ("npz patch_size huge", {"content": npz(s2=np.ones((2, 10, 6, 6), np.float32), s2_dates=np.array([1, 2])),
                             "headers": {"content-type": "application/x-npz"},
                             "params": {"patch_size": "1" + "0" * 400}}, 422, "patch_size"),
    ("npz stats nested 6000 deep", {"content": npz(s2=np.ones((2, 10, 6, 6), np.float32), s2_dates=np.array([1, 2])),
                                    "headers": {"content-type": "application/x-npz"},
                                    "params": {"patch_size": "20", "normalize": "custom", "stats": nested().decode()}},
     400, "stats"),
    ("npz dates out of range", {"content": npz(s2=np.ones((2, 10, 6, 6), np.float32), s2_dates=np.array([-5, 400])),
                                "headers": {"content-type": "application/x-npz"}, "params": {"patch_size": "20"}},
     422, "s2_dates"),
    ("npz dates not integers", {"content": npz(s2=np.ones((2, 10, 6, 6), np.float32), s2_dates=np.array([1.5, 2])),
                                "headers": {"content-type": "application/x-npz"}, "params": {"patch_size": "20"}},
     422, "s2_dates"),
]

# Decompression bombs: each small on the wire, each claiming far more than it may decode to. 413, from headers.
BOMB_CASES: list[tuple[str, dict[str, Any], int, str]] = [
    ("geotiff deflate bomb uint8", {"files": {"s2": ("s2.tif", sparse_tiff("uint8"))},
                                    "data": {"patch_size": "20"}}, 413, "max_decoded_bytes_per_sensor"),
    ("geotiff deflate bomb float32", {"files": {"s2": ("s2.tif", sparse_tiff("float32"))},
                                      "data": {"patch_size": "20"}}, 413, "max_decoded_bytes_per_sensor"),
    ("geotiff series one file per date, together too much",
     {"files": [("s2", (f"{d}.tif", sparse_tiff("uint8", bands=10))) for d in range(4)], "data": {"patch_size": "20"}},
     413, "with the rest of s2"),
    ("geotiff sensors together too much for a request",
     {"files": [("s2", ("s2.tif", sparse_tiff("uint8", bands=30))), ("s1-asc", ("s1.tif", sparse_tiff("uint8", 30))),
                ("l8", ("l8.tif", sparse_tiff("uint8", 22)))], "data": {"patch_size": "20"}},
     413, "max_decoded_bytes_per_request"),
    ("npz zip bomb", {"content": npz_bomb(), "headers": {"content-type": "application/x-npz"},
                      "params": {"patch_size": "20"}}, 413, "max_decoded_bytes_per_sensor"),
    ("npy bomb header", {"files": {"s2": ("s2.npy", np.lib.format.magic(1, 0) + _npy_header((10, 10, 2048, 2048)))},
                         "data": S2_FORM}, 413, "max_decoded_bytes_per_sensor"),
    ("base64 shape claims 1.6 GB", {"json": body([{"s2": {"dtype": "float32", "shape": [10, 10, 2048, 2048],
                                                         "data": "", "dates": list(range(1, 11))}}])},
     413, "max_decoded_bytes_per_sensor"),
]


MASK_CASES: list[tuple[str, dict[str, Any], int, str]] = [
    ("unknown head", {"json": {"head": "nope", "tiles": [{"s2": s2()}]}}, 404, "head"),
    ("head name with a path", {"json": {"head": "../etc", "tiles": [{"s2": s2()}]}}, 422, "head"),
    ("sensor the head was not fitted on", {"json": {"head": SEG_HEAD, "tiles": [{"s2": s2()}]}}, 422, "fitted on"),
    ("patch size other than the head's", {"json": {"head": SEG_HEAD, "patch_size": 60, "tiles": [{"s2": s2()}]}},
     422, "patch_size"),
    *[(f"patch_size {name}", raw_json({"head": SEG_HEAD, "patch_size": v, "tiles": [{"s2": s2()}]}), 422,
       "patch_size") for name, v in EXTREMES],
    ("json nested 6000 deep", {"content": b'{"head": "x", "tiles": ' + nested() + b"}",
                               "headers": {"content-type": "application/json"}}, 400, "body"),
]


def _check(service: Service, path: str, kwargs: dict[str, Any], status: int, text: str) -> None:
    r = httpx.post(f"{service.url}{path}", timeout=30, **kwargs)
    assert r.status_code == status, r.text[:500]
    error = r.json()["error"]
    assert text in json.dumps(error), error


@pytest.mark.parametrize(("case", "kwargs", "status", "text"), CASES, ids=[c[0] for c in CASES])
def test_malformed_embedding_requests(gateway_service: Service, case: str, kwargs: dict, status: int,
                                      text: str) -> None:
    _check(gateway_service, "/v1/embeddings", kwargs, status, text)


@pytest.mark.parametrize(("case", "kwargs", "status", "text"), EXTREME_CASES + BOMB_CASES,
                         ids=[c[0] for c in EXTREME_CASES + BOMB_CASES])
def test_extreme_and_hostile_embedding_requests(gateway_service: Service, case: str, kwargs: dict, status: int,
                                                text: str) -> None:
    """Huge, negative, zero, non-finite and wrong-typed numbers in every numeric field, nesting and bombs: each a
    4xx naming the field (or limit), answered fast (the decoded-size limits are checked from headers)."""
    started = time.monotonic()
    _check(gateway_service, "/v1/embeddings", kwargs, status, text)
    assert time.monotonic() - started < 10, "a refusal should not take seconds"


@pytest.mark.parametrize(("case", "kwargs", "status", "text"), MASK_CASES, ids=[c[0] for c in MASK_CASES])
def test_malformed_mask_requests(gateway_service: Service, case: str, kwargs: dict, status: int, text: str) -> None:
    _check(gateway_service, "/v1/masks", kwargs, status, text)


def test_malformed_v2_requests(gateway_service: Service) -> None:
    p = gateway_service.settings.queue_prefix
    url = f"{gateway_service.url}/v2/models"
    x = {"name": "s2", "shape": [1, 1, 10, 6, 6], "datatype": "FP32", "data": [0.0] * 360}
    d = {"name": "s2_dates", "shape": [1, 1], "datatype": "INT64", "data": [5]}
    cases = [
        (f"{url}/nope-tile/infer", {"inputs": [x, d], "parameters": {"patch_size": 20}}, 404, "model"),
        (f"{url}/{p}-tile/infer", {"inputs": [x, d]}, 422, "patch_size"),
        (f"{url}/{p}-tile/infer", {"inputs": [{**x, "datatype": "FP99"}, d], "parameters": {"patch_size": 20}},
         422, "datatype"),
        (f"{url}/{p}-tile/infer", {"inputs": [{**x, "data": [0.0] * 7}, d], "parameters": {"patch_size": 20}},
         422, "360 expected"),
        (f"{url}/{p}-tile/infer", {"inputs": [x], "parameters": {"patch_size": 20}}, 422, "s2_dates"),
        (f"{url}/{p}-tile/infer", {"inputs": [{**x, "parameters": {"binary_data_size": 9}}, d],
                                   "parameters": {"patch_size": 20}}, 422, "binary_data_size"),
    ]
    for target, payload, status, text in cases:
        r = httpx.post(target, json=payload, timeout=30)
        assert r.status_code == status, (payload, r.text)
        assert text in r.json()["error"], r.json()


V2_X = {"name": "s2", "shape": [1, 1, 10, 6, 6], "datatype": "FP32", "data": [0.0] * 360}
V2_D = {"name": "s2_dates", "shape": [1, 1], "datatype": "INT64", "data": [5]}


def v2(x: dict[str, Any] | None = None, d: dict[str, Any] | None = None, **parameters: Any) -> dict[str, Any]:
    return {"inputs": [x or V2_X, d or V2_D], "parameters": {"patch_size": 20, **parameters}}


def v2_binary(shape: list[int], size: int) -> dict[str, Any]:
    """A binary-extension request whose header claims ``shape`` FP32 with ``size`` bytes (none follow)."""
    head = json.dumps({"inputs": [{"name": "s2", "shape": shape, "datatype": "FP32",
                                   "parameters": {"binary_data_size": size}}],
                       "parameters": {"patch_size": 20}}).encode()
    return {"content": head, "headers": {"content-type": "application/octet-stream",
                                         "inference-header-content-length": str(len(head))}}


def gzipped(content: bytes) -> dict[str, Any]:
    return {"content": gzip.compress(content, 6), "headers": {"content-type": "application/json",
                                                              "content-encoding": "gzip"}}


V2_CASES: list[tuple[str, dict[str, Any], int, str]] = [
    *[(f"patch_size {name}", raw_json(v2(patch_size=v)), 422, "parameters.patch_size") for name, v in EXTREMES],
    ("patch_size of 5000 digits as a string", raw_json(v2(patch_size="9" * 5000)), 422, "parameters.patch_size"),
    ("shape huge", raw_json(v2({**V2_X, "shape": [HUGE, 1, 10, 6, 6]})), 413, "inputs[s2].shape"),
    ("shape negative", raw_json(v2({**V2_X, "shape": [-1, 1, 10, 6, 6]})), 422, "inputs[s2].shape"),
    ("shape zero", raw_json(v2({**V2_X, "shape": [0, 1, 10, 6, 6], "data": []})), 422, "batch size"),
    ("shape NaN", raw_json(v2({**V2_X, "shape": [NAN, 1, 10, 6, 6]})), 422, "shape"),
    ("shape string", raw_json(v2({**V2_X, "shape": ["one", 1, 10, 6, 6]})), 422, "shape"),
    ("batch larger than max_tiles_per_request", raw_json(v2({**V2_X, "shape": [9, 1, 10, 6, 6],
                                                            "data": [0.0] * 360 * 9},
                                                           {**V2_D, "shape": [9, 1], "data": [5] * 9})),
     413, "max_tiles_per_request"),
    *[(f"date {name}", raw_json(v2(d={**V2_D, "data": [v]})), 422, "inputs[s2_dates]") for name, v in
      [("huge", HUGE), ("beyond int64", 2**63), ("negative", -5), ("zero", 0), ("NaN", NAN), ("Infinity", INF),
       ("fraction", 1.5), ("string", "may"), ("object", {"d": 5})]],
    ("dates as FP32", raw_json(v2(d={**V2_D, "datatype": "FP32", "data": [5.0]})), 422, "INT64"),
    *[(f"value {name}", raw_json(v2({**V2_X, "data": [v] * 360})), 422, "inputs[s2]") for name, v in
      [("NaN", NAN), ("Infinity", INF), ("beyond float32", 1e300), ("string", "x"), ("huge int", HUGE)]],
    ("json nested 6000 deep", {"content": b'{"inputs": ' + nested() + b"}",
                               "headers": {"content-type": "application/json"}}, 400, "body"),
    ("binary shape claims 1.6 GB", v2_binary([1, 10, 10, 2048, 2048], 10 * 10 * 2048 * 2048 * 4), 413,
     "max_decoded_bytes_per_sensor"),
    ("gzip inflating past max_body_bytes", gzipped(b" " * (8 * 2**20 + 1)), 413, "max_body_bytes"),
    ("gzip of json that parses to too much", gzipped(b'{"inputs": [' + b"[]," * 2_500_000 + b"[]]}"), 413,
     "max_decoded_bytes_per_request"),
    ("header length of 30 digits", {**v2_binary([1], 4), "headers": {"inference-header-content-length": "9" * 30}},
     400, "Inference-Header-Content-Length"),
]


@pytest.mark.parametrize(("case", "kwargs", "status", "text"), V2_CASES, ids=[c[0] for c in V2_CASES])
def test_extreme_and_hostile_v2_requests(gateway_service: Service, case: str, kwargs: dict, status: int,
                                         text: str) -> None:
    url = f"{gateway_service.url}/v2/models/{gateway_service.settings.queue_prefix}-tile/infer"
    started = time.monotonic()
    r = httpx.post(url, timeout=30, **kwargs)
    assert r.status_code == status, r.text[:500]
    assert text in r.json()["error"], r.json()
    assert time.monotonic() - started < 10, "a refusal should not take seconds"


def test_still_serving_after_bad_requests(gateway_service: Service) -> None:
    r = httpx.post(f"{gateway_service.url}/v1/embeddings", json=body(), timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["tiles"][0]["embedding"]["shape"] == [256]
    with rasterio.open(io.BytesIO(S2_TIF)) as src:
        assert src.count == 20


def test_configuration_whose_graph_cannot_load_is_503_and_the_gateway_stays_up(
    redis_url: str, reference_dir: Path, tmp_path: Path
) -> None:
    """A server fault, not the input's: 503 naming the cause, answered at once the second time (the failure is
    remembered, not retried per request), and the gateway stays ready. Real uvicorn, Redis, worker, ORT backend."""
    checkpoint = reference_dir / "anysat_tiny_seed0.pth"
    model = create_model(checkpoint=checkpoint)
    cache = ExportCache(tmp_path / "exports", model, "sha")
    (tmp_path / "exports").rmdir()
    (tmp_path / "exports").write_text("a file where the export cache belongs")
    prefix = f"u{uuid.uuid4().hex[:8]}"
    settings = GatewaySettings(redis_url=redis_url, queue_prefix=prefix, checkpoint=checkpoint,
                               _env_file=None)  # type: ignore[call-arg]
    pool = WorkerPool(redis_url, prefix, ModelRunner(model, ExportedBackend(cache, "onnx")))
    pool.start(1)
    try:
        with serving(create_app(settings)) as url:
            wait_ready(url)
            messages = []
            for _ in range(2):
                r = httpx.post(f"{url}/v1/embeddings", json=body(), timeout=60)
                assert r.status_code == 503, r.text
                assert r.json()["error"]["code"] == "model_unavailable"
                messages.append(r.json()["error"]["message"])
            assert "NotADirectoryError: Not a directory" in messages[0]
            # the first answer comes from an attempt, the second from the remembered failure
            assert "s ago" not in messages[0] and re.search(r"failed \d+ s ago", messages[1])
            assert str(tmp_path) not in messages[0]  # the cause, not the server's paths
            assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    finally:
        pool.stop()
