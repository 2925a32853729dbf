"""Requests and a bounded load for deploy/e2e.py: the shipped TreeSatAI tile (aerial GeoTIFF + Sentinel-2/1
series) and the shipped Landsat 8 crop, posted as README's recipes post them (multipart), over 127.0.0.1."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
AERIAL = ROOT / "examples" / "data" / "treesatai-ts" / "Abies_alba_1_1005_WEFL_NLF.tif"


@dataclass(frozen=True)
class Inputs:
    aerial: bytes
    series: dict[str, tuple[bytes, str]]  # sensor -> (.npy bytes, comma-separated dates)
    l8: bytes
    l8_path: Path


def inputs(out: Path) -> Inputs:
    """Writes the request files with the repository's own example scripts (as README's recipes do)."""
    out.mkdir(parents=True, exist_ok=True)
    for script, arg in (("treesatai_series.py", out / "treesatai"), ("landsat_l8_tile.py", out / "l8.tif")):
        subprocess.run([sys.executable, str(ROOT / "examples" / script), str(arg)], check=True, cwd=ROOT,
                       capture_output=True)
    series = {s: ((out / "treesatai" / f"{s}.npy").read_bytes(), (out / "treesatai" / f"{s}_dates.txt").read_text())
              for s in ("s2", "s1-asc")}
    return Inputs(AERIAL.read_bytes(), series, (out / "l8.tif").read_bytes(), out / "l8.tif")


class Request:
    def __init__(self, data: Inputs) -> None:
        self.data = data

    def embed_form(self, output: str) -> tuple[list[tuple[str, Any]], dict[str, str]]:
        files: list[tuple[str, Any]] = [("aerial", ("aerial.tif", self.data.aerial, "image/tiff"))]
        fields = {"patch_size": "20", "crop": "center", "output": output, "format": "npy"}
        for name, (blob, dates) in self.data.series.items():
            files.append((name, (f"{name}.npy", blob, "application/octet-stream")))
            fields[f"{name}_dates"] = dates
        return files, fields

    def mask_form(self) -> tuple[list[tuple[str, Any]], dict[str, str]]:
        return ([("l8", ("l8.tif", self.data.l8, "image/tiff"))],
                {"l8_dates": "2020-05-18", "head": "landcover", "format": "geotiff"})

    def embed(self, client: httpx.Client, output: str) -> np.ndarray:
        files, fields = self.embed_form(output)
        r = client.post("/v1/embeddings", files=files, data=fields, timeout=120)
        if r.status_code != 200:
            raise AssertionError(f"/v1/embeddings output={output}: {r.status_code} {r.text[:300]}")
        return np.load(io.BytesIO(r.content))

    def mask(self, client: httpx.Client) -> tuple[bool, bool, tuple[int, ...], str]:
        import rasterio  # the one check that needs it: the answer's georeference

        files, fields = self.mask_form()
        r = client.post("/v1/masks", files=files, data=fields, timeout=120)
        if r.status_code != 200:
            raise AssertionError(f"/v1/masks: {r.status_code} {r.text[:300]}")
        with rasterio.MemoryFile(r.content) as mem, mem.open() as mask, rasterio.open(self.data.l8_path) as src:
            return (mask.crs == src.crs, mask.transform.almost_equals(src.transform), mask.shape,
                    mask.tags().get("classes", ""))


class Load:
    """``total`` requests from ``concurrency`` threads, each with its own connection: tile embeddings, every 20th
    a mask, every 20th a GET /v1/models. ``retry``: a 429/503 is retried after its Retry-After, at most 20 times
    (what a client does); a request is *lost* if it never gets a 200. Without ``retry`` every answer is recorded
    as it comes."""

    def __init__(self, req: Request, url: str, total: int, concurrency: int, retry: bool) -> None:
        self.req, self.url, self.total, self.concurrency, self.retry = req, url, total, concurrency, retry
        self.done = self.lost = 0
        self.failures: list[str] = []
        self.latencies: list[tuple[int, float, float]] = []  # (status, monotonic start, seconds) of every answer
        self.ok_times: list[float] = []  # monotonic time of each 200
        self._lock, self._next, self._stop = threading.Lock(), 0, threading.Event()
        self._pool = ThreadPoolExecutor(concurrency)
        self._futures: list[Any] = []

    def __enter__(self) -> Load:
        self._futures = [self._pool.submit(self._worker) for _ in range(self.concurrency)]
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self.join()

    def join(self) -> None:
        for f in self._futures:
            f.result()
        self._pool.shutdown()

    def _take(self) -> int | None:
        with self._lock:
            if self._stop.is_set() or self._next >= self.total:
                return None
            self._next += 1
            return self._next

    def _worker(self) -> None:
        with httpx.Client(base_url=self.url, timeout=90) as client:
            while (n := self._take()) is not None:
                self._one(client, n)

    def _one(self, client: httpx.Client, n: int) -> None:
        # A mask costs ~15x a tile embedding here (GeoTIFF in and out): 1 in 20 keeps the load bounded in time.
        # Every 20th (offset) is a GET /v1/models, as a client checking what is served does.
        path, (files, fields) = (("/v1/masks", self.req.mask_form()) if n % 20 == 0 else
                                 ("/v1/models", ([], {})) if n % 20 == 10 else
                                 ("/v1/embeddings", self.req.embed_form("tile")))
        status, why = 0, ""
        for _ in range(20 if self.retry else 1):
            t0 = time.monotonic()
            try:
                r = client.get(path) if path == "/v1/models" else client.post(path, files=files, data=fields)
                status, why = r.status_code, r.text[:200]
            except httpx.HTTPError as e:
                status, why = -1, repr(e)
            with self._lock:
                self.latencies.append((status, t0, time.monotonic() - t0))
                if status == 200:
                    self.ok_times.append(time.monotonic())
            if status not in (429, 503) or self._stop.is_set():
                break
            try:
                time.sleep(min(float(r.headers.get("retry-after", 1)), 5))
            except (ValueError, NameError):
                time.sleep(1)
        with self._lock:
            self.done += 1
            if status != 200 and self.retry:
                self.lost += 1
                self.failures.append(f"{path} -> {status}: {why}")

    def ok_since(self, t: float) -> int:
        with self._lock:
            return sum(1 for x in self.ok_times if x > t)

    def status_counts(self) -> Counter[int]:
        with self._lock:
            return Counter(code for code, _, _ in self.latencies)

    def latency_summary(self) -> str:
        ok = sorted(lat for code, _, lat in self.latencies if code == 200)
        if not ok:
            return "-"
        return f"{ok[len(ok) // 2]:.2f} / {ok[int(len(ok) * 0.95)]:.2f} / {ok[-1]:.2f}"
