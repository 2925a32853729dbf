"""Decompression bombs against a gateway in its own process (``python -m service.gateway.serve`` on the session's
Redis, no workers: every bomb is refused before anything is queued). Each is a 413 naming the decoded-size
limit, and the gateway process's peak RSS (``VmHWM``, which only grows) stays within ``GROWTH_BOUND_MB`` of
what it was after a warm-up, across all of them together — though they claim 0.4 to 1.6 GB decoded each, and
before the limits the GeoTIFF ones took the gateway to 1.2 GB (uint8) and 4.4 GB (float32).

The bound is not timing-dependent: it is what the refused requests' own bodies (at most 16 MiB here, inflated
gzip included, twice while inflating) and the parser's buffers can cost; nothing they claim is allocated.
A legitimate tile of the same kind (2000 x 2000 x 4 float32 aerial, 64 MB decoded) still decodes."""

from __future__ import annotations

import gzip
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from affine import Affine
from rasterio.io import MemoryFile
from test_gateway_errors import BOMB_CASES, S2_FORM, S2_TIF, V2_CASES, body, gzipped, npz, raw_json, v2

REPO = Path(__file__).resolve().parents[1]
BODY_LIMIT = 16 * 2**20
GROWTH_BOUND_MB = 64


def _hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.fixture(scope="module")
def gateway_process(redis_url: str, reference_dir: Path, tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "ANYSAT_REDIS_URL": redis_url, "ANYSAT_QUEUE_PREFIX": f"b{uuid.uuid4().hex[:8]}",
           "ANYSAT_CHECKPOINT": str(reference_dir / "anysat_tiny_seed0.pth"), "ANYSAT_PORT": str(port),
           "ANYSAT_MAX_BODY_BYTES": str(BODY_LIMIT), "ANYSAT_EXPORT_DIR": str(tmp_path_factory.mktemp("exports")),
           "PYTHONPATH": str(REPO)}
    log = tmp_path_factory.mktemp("log") / "gateway.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "service.gateway.serve", "--log-level", "warning"],
                                env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise AssertionError(f"gateway did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def deflate_tif(bands: np.ndarray, res: float) -> bytes:
    with MemoryFile() as mf:
        with mf.open(driver="GTiff", count=bands.shape[0], height=bands.shape[1], width=bands.shape[2],
                     dtype=bands.dtype.name, crs="EPSG:32632", transform=Affine(res, 0, 5e5, 0, -res, 5e6),
                     compress="deflate", tiled=True) as dst:
            dst.write(bands)
        return mf.read()


def _gzip_json_numbers() -> dict[str, Any]:
    """A v2 JSON body of 4 M numbers (16 MiB, the body limit) gzipped to ~20 KB; parsed it would take ~150 MB."""
    n = 4 * 2**20 - 32
    head = b'{"parameters": {"patch_size": 20}, "inputs": [{"name": "s2", "datatype": "FP32", "shape": [%d], ' % n
    content = head + b'"data": [' + b"0.5," * (n - 1) + b"0.5]}]}"
    assert len(content) <= BODY_LIMIT
    return {"content": gzip.compress(content, 6), "headers": {"content-type": "application/json",
                                                              "content-encoding": "gzip"}}


def test_bombs_are_413_and_the_gateway_does_not_grow(gateway_process: tuple[str, subprocess.Popen[bytes]]) -> None:
    url, proc = gateway_process
    with httpx.Client(base_url=url, timeout=30) as client:
        infer = f"/v2/models/{client.get('/v1/models').json()['v2_models'][0]}/infer"
        # Warm-up: every decoder once, to a 422 after decoding (lazy imports and GDAL's first allocations).
        npz_ok = npz(s2=np.ones((2, 10, 6, 6), np.float32), s2_dates=np.array([1, 2]))
        for path, kwargs in [
            ("/v1/embeddings", {"files": {"s2": ("s2.tif", S2_TIF)}, "data": {**S2_FORM, "patch_size": "15"}}),
            ("/v1/embeddings", {"json": body(patch_size=15)}),
            ("/v1/embeddings", {"content": npz_ok, "headers": {"content-type": "application/x-npz"},
                                "params": {"patch_size": "15"}}),
            (infer, raw_json(v2(patch_size=15))),
            (infer, {**raw_json(v2(patch_size=15)), "content": gzip.compress(raw_json(v2(patch_size=15))["content"]),
                     "headers": {"content-type": "application/json", "content-encoding": "gzip"}}),
        ]:
            assert client.post(path, **kwargs).status_code == 422
        time.sleep(0.2)
        baseline = _hwm_mb(proc.pid)
        bombs = [("/v1/embeddings", case, kwargs, text) for case, kwargs, status, text in BOMB_CASES]
        bombs += [(infer, case, kwargs, text) for case, kwargs, status, text in V2_CASES
                  if status == 413 and text.startswith("max_decoded")]
        bombs.append((infer, "gzip of 4 M JSON numbers", _gzip_json_numbers(), "max_decoded_bytes_per_request"))
        bombs.append((infer, "gzip inflating past the body limit", gzipped(b" " * (BODY_LIMIT + 1)), "max_body_bytes"))
        for path, case, kwargs, text in bombs:
            started = time.monotonic()
            r = client.post(path, **kwargs)
            assert r.status_code == 413, (case, r.text[:300])
            assert text in r.text, (case, r.text[:300])
            assert time.monotonic() - started < 5, case
        growth = _hwm_mb(proc.pid) - baseline
        assert growth < GROWTH_BOUND_MB, f"gateway peak RSS grew {growth:.0f} MB over {len(bombs)} bombs"
        # A legitimate tile of the same kind decodes (64 MB float32): refused only later, for its patch size.
        aerial = deflate_tif(np.full((4, 2000, 2000), 0.5, np.float32), res=0.2)
        assert len(aerial) < BODY_LIMIT
        r = client.post("/v1/embeddings", files={"aerial": ("a.tif", aerial)}, data={"patch_size": "30"})
        assert r.status_code == 422 and "max_decoded" not in r.text, r.text[:300]


def test_a_tile_at_the_legit_size_is_not_refused_by_the_decoded_limit() -> None:
    """The defaults' justification, checked: 2048 x 2048 x 4 float32 (an aerial tile) fits one sensor's budget
    with room for an S2 series of the same ground; the 1.5 KB bombs do not."""
    from service.gateway.inputs.budget import DecodeBudget
    from service.gateway.settings import GatewaySettings

    settings = GatewaySettings(_env_file=None)  # type: ignore[call-arg]
    budget = DecodeBudget.of(settings)
    budget.claim("aerial", 2048 * 2048 * 4 * 4, "aerial float32")
    budget.claim("s2", 41 * 41 * 10 * 100 * 4, "s2 series of 100 dates")
    assert settings.max_decoded_bytes_per_sensor < 2048 * 2048 * 100  # the uint8 bomb
