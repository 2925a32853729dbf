"""Bad inputs against a live service (`anysat serve`: gateway + private Redis + one eager worker): per class,
the status, the time to answer, the gateway's peak RSS while answering, and whether the client's connection
survived (the next request on it reuses the same socket).

    python -m benchmarks.bad_inputs                      # tiny reference checkpoint, every class
    python -m benchmarks.bad_inputs --only tiff_bomb_float32

Peak RSS is the gateway process's ``VmHWM``, reset before each case (``/proc/<pid>/clear_refs`` = 5), minus
its ``VmRSS`` just before: what answering that one request cost the gateway.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import io
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from affine import Affine
from rasterio.io import MemoryFile

from benchmarks.proc import status_mb
from benchmarks.stack import anysat_serve

REPO = Path(__file__).resolve().parents[1]
TINY = REPO.parent / "shared" / "fixtures" / "reference" / "anysat_tiny_seed0.pth"


def sparse_tiff(dtype: str, side: int = 2048, bands: int = 100) -> bytes:
    """A decompression bomb within every header limit: tiled, deflate, no tile written (GDAL SPARSE_OK), ~1.5 KB."""
    with MemoryFile() as mf:
        with mf.open(driver="GTiff", count=bands, height=side, width=side, dtype=dtype, compress="deflate",
                     tiled=True, blockxsize=256, blockysize=256, sparse_ok=True, crs="EPSG:32632",
                     transform=Affine(10, 0, 500000, 0, -10, 5000000)):
            pass
        return mf.read()


def _s2(t: int = 2) -> dict[str, Any]:
    data = base64.b64encode(np.full((t, 10, 6, 6), 3000, np.float32).tobytes()).decode()
    return {"dtype": "float32", "shape": [t, 10, 6, 6], "data": data, "dates": list(range(10, 10 + 10 * t, 10))}


def _json(obj: Any) -> dict[str, Any]:
    return {"content": json.dumps(obj).encode(), "headers": {"content-type": "application/json"}}


def _v2(params: dict[str, Any], inputs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    x = {"name": "s2", "shape": [1, 1, 10, 6, 6], "datatype": "FP32", "data": [0.0] * 360}
    d = {"name": "s2_dates", "shape": [1, 1], "datatype": "INT64", "data": [5]}
    return _json({"inputs": inputs or [x, d], "parameters": params})


def _npz_bomb() -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, s2=np.zeros((10, 10, 2048, 2048), np.uint8), s2_dates=np.arange(1, 11))
    return buf.getvalue()


def _gzip_json_numbers() -> dict[str, Any]:
    """A 64 MiB v2 JSON body of numbers, gzipped to ~100 KB: 16 M values, parsed to Python floats."""
    n = 16 * 2**20 - 64
    head = b'{"parameters": {"patch_size": 20}, "inputs": [{"name": "s2", "datatype": "FP32", "shape": [%d], ' % n
    body = head + b'"data": [' + b"0.5," * (n - 1) + b"0.5]}]}"
    return {"content": gzip.compress(body, 6), "headers": {"content-type": "application/json",
                                                          "content-encoding": "gzip"}}


def cases(prefix: str) -> dict[str, tuple[str, Callable[[], dict[str, Any]]]]:
    v2 = f"/v2/models/{prefix}-tile/infer"
    deep = b"[" * 100_000 + b"]" * 100_000
    return {
        "patch_size_400_digits_json": ("/v1/embeddings", lambda: _json(
            {"patch_size": 10**400, "tiles": [{"s2": _s2()}]})),
        "patch_size_400_digits_v2": (v2, lambda: _v2({"patch_size": 10**400})),
        "transform_nan_json": ("/v1/embeddings", lambda: {"content": json.dumps(
            {"patch_size": 20, "tiles": [{"s2": {**_s2(), "crs": "EPSG:32632",
                                                 "transform": [float("nan"), 0, 0, 0, float("inf"), 0]}}]}).encode(),
            "headers": {"content-type": "application/json"}}),
        "json_nested_100k_v1": ("/v1/embeddings", lambda: {"content": b'{"patch_size": 20, "tiles": ' + deep + b"}",
                                                           "headers": {"content-type": "application/json"}}),
        "json_nested_100k_v2": (v2, lambda: {"content": b'{"inputs": ' + deep + b"}",
                                             "headers": {"content-type": "application/json"}}),
        "tiff_bomb_uint8": ("/v1/embeddings", lambda: {
            "files": {"s2": ("s2.tif", sparse_tiff("uint8"))},
            "data": {"patch_size": "20", "normalize": "none", "s2_dates": ",".join(str(d) for d in range(1, 11))}}),
        "tiff_bomb_float32": ("/v1/embeddings", lambda: {
            "files": {"s2": ("s2.tif", sparse_tiff("float32"))},
            "data": {"patch_size": "20", "normalize": "none", "s2_dates": ",".join(str(d) for d in range(1, 11))}}),
        "npz_bomb_400MiB": ("/v1/embeddings", lambda: {
            "content": _npz_bomb(), "headers": {"content-type": "application/x-npz"},
            "params": {"patch_size": "20", "normalize": "none"}}),
        "base64_shape_1.6GB": ("/v1/embeddings", lambda: _json(
            {"patch_size": 20, "tiles": [{"s2": {"dtype": "float32", "shape": [10, 10, 2048, 2048], "data": "",
                                                 "dates": list(range(1, 11))}}]})),
        "v2_binary_shape_1.6GB": (v2, lambda: _v2({"patch_size": 20}, [
            {"name": "s2", "shape": [1, 10, 10, 2048, 2048], "datatype": "FP32",
             "parameters": {"binary_data_size": 10 * 10 * 2048 * 2048 * 4}}])),
        "v2_gzip_json_16M_numbers": (v2, _gzip_json_numbers),
    }


def _local_port(response: httpx.Response) -> int | None:
    stream = response.extensions.get("network_stream")
    try:
        addr = stream.get_extra_info("client_addr") if stream is not None else None
    except OSError:  # already closed
        return None
    return addr[1] if addr else None


def run_case(url: str, pid: int, path: str, make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    kwargs = make()
    with httpx.Client(base_url=url, timeout=300) as client:
        warm_port = _local_port(client.get("/healthz"))
        time.sleep(0.5)
        rss0 = status_mb("VmRSS", pid)
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
        started = time.perf_counter()
        try:
            r = client.post(path, **kwargs)
            status, text = r.status_code, r.text[:160]
        except httpx.HTTPError as exc:
            status, text = None, f"{type(exc).__name__}: {exc}"
        elapsed = time.perf_counter() - started
        peak = status_mb("VmHWM", pid)
        try:
            after = client.get("/healthz")
            kept = warm_port is not None and _local_port(after) == warm_port
        except httpx.HTTPError:
            kept = False
    return {"status": status, "seconds": round(elapsed, 3), "rss_before_mb": round(rss0), "peak_mb": round(peak),
            "peak_growth_mb": round(peak - rss0), "connection_kept": kept, "body": text}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.bad_inputs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(TINY))
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--json", dest="json_out", default=None, help="also write the results here")
    args = parser.parse_args(argv)

    tmp = tempfile.mkdtemp(prefix="anysat-bad-")
    prefix = "anysat"
    env = {"ANYSAT_CHECKPOINT": args.checkpoint, "ANYSAT_EXPORT_DIR": tmp, "ANYSAT_RUNTIME": "eager",
           "ANYSAT_QUEUE_PREFIX": prefix}
    with open(Path(tmp) / "serve.log", "wb") as log, anysat_serve(env, log=log) as serve:
        url = serve.url
        # Warm-up: one real request, so lazy imports and first allocations are not charged to the first case.
        ok = httpx.post(f"{url}/v1/embeddings", json={"patch_size": 20, "tiles": [{"s2": _s2()}]}, timeout=120)
        assert ok.status_code == 200, ok.text
        results = {}
        print("| class | status | time (s) | gateway peak RSS growth (MB) | peak RSS (MB) | connection kept |")
        print("|---|---|---|---|---|---|")
        for name, (path, make) in cases(prefix).items():
            if args.only and name not in args.only:
                continue
            res = run_case(url, serve.pid, path, make)
            results[name] = res
            print(f"| {name} | {res['status']} | {res['seconds']} | {res['peak_growth_mb']} | {res['peak_mb']} | "
                  f"{res['connection_kept']} |", flush=True)
            if serve.proc.poll() is not None:
                print("gateway died", file=sys.stderr)
                break
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(results, indent=1))
        for name, res in results.items():
            print(f"{name}: {res['body']}")
    print(f"(serve log: {Path(tmp) / 'serve.log'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
