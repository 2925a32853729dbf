"""The Python client: imports with numpy + httpx alone, honours Retry-After on 429/503 within a bounded budget,
and raises typed errors — against a real gateway (uvicorn, Redis, a slow real model worker)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate
from pathlib import Path

import numpy as np
import pytest
from gateway_fixtures import REPO, serving
from test_gateway_overload import metric, settings_for, slow_gateway

from model import create_model
from model.encoder import AnySat
from service import client as c
from service.client import AnySatClient
from service.gateway.app import create_app
from service.gateway.settings import GatewaySettings

SERVER_STACK = ("fastapi", "starlette", "pydantic", "pydantic_settings", "redis", "torch", "rasterio", "uvicorn")


def s2_tile() -> tuple[dict[str, np.ndarray], dict[str, list[int]]]:
    return {"s2": np.full((2, 10, 6, 6), 3000, np.uint16)}, {"s2": [10, 20]}


def test_client_imports_with_numpy_and_httpx_only() -> None:
    code = ("import json, sys, service.client; print(json.dumps(sorted(m for m in sys.modules "
            f"if m.split('.')[0] in {SERVER_STACK!r} or m.startswith('service.gateway'))))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == []


def test_retry_after_and_error_types() -> None:
    assert c.parse_retry_after("3") == 3.0 and c.parse_retry_after("1.5") == 1.5
    assert c.parse_retry_after(None) is None and c.parse_retry_after("soon") is None
    assert 8 <= c.parse_retry_after(formatdate(time.time() + 10, usegmt=True)) <= 10  # type: ignore[operator]
    cases = {400: c.BadInput, 422: c.BadInput, 401: c.Unauthorized, 404: c.NotFound, 409: c.Conflict,
             413: c.LimitExceeded, 429: c.Overloaded, 500: c.ServerError, 503: c.Unavailable,
             504: c.DeadlineExceeded, 418: c.AnySatError}
    for status, cls in cases.items():
        assert type(c.error_for(status, {"code": "x", "field": "f", "message": "m"})) is cls, status
    limit = c.error_for(422, {"code": "limit_exceeded", "field": "tiles", "message": "m", "limit": "max_x"})
    assert isinstance(limit, c.LimitExceeded) and isinstance(limit, c.BadInput) and limit.limit == "max_x"
    v2 = c.error_for(422, "inputs[s2]: wrong")
    assert v2.message == "inputs[s2]: wrong" and v2.field == "" and v2.code is None
    assert issubclass(c.DeadlineExceeded, c.ServerError) and issubclass(c.ServerError, c.AnySatError)


@pytest.fixture(scope="module")
def tiny_model(reference_dir: Path) -> AnySat:
    return create_model(checkpoint=reference_dir / "anysat_tiny_seed0.pth")


@pytest.fixture(scope="module")
def one_slot(redis_url: str, reference_dir: Path, tiny_model: AnySat) -> Iterator[str]:
    """A gateway taking one request at a time, with a worker spending 1 s on every batch."""
    settings = settings_for(redis_url, reference_dir, max_in_flight=1, max_tiles_per_request=2)
    with slow_gateway(settings, tiny_model, sleep_s=1.0) as url:
        yield url


def test_client_retries_429_until_it_succeeds(one_slot: str) -> None:
    tile, dates = s2_tile()
    refused_before = metric(one_slot, "anysat_gateway_rejected_total", 'reason="max_in_flight"')

    def embed(_: int) -> np.ndarray:
        with AnySatClient(one_slot, timeout_s=30, retries=10, max_retry_wait_s=40) as client:
            (result,) = client.embed(tile, dates=dates, patch_size=20)
            return result.arrays["embedding"]

    with ThreadPoolExecutor(3) as pool:
        embeddings = list(pool.map(embed, range(3)))
    for e in embeddings[1:]:
        np.testing.assert_allclose(e, embeddings[0], rtol=1e-4, atol=1e-5)
    # Three callers on one slot: at least two were refused at first, and came back.
    assert metric(one_slot, "anysat_gateway_rejected_total", 'reason="max_in_flight"') - refused_before >= 2


def test_client_without_retries_raises_overloaded(one_slot: str) -> None:
    tile, dates = s2_tile()
    holder = threading.Thread(target=lambda: AnySatClient(one_slot, timeout_s=30).embed(
        tile, dates=dates, patch_size=20), daemon=True)
    holder.start()
    deadline = time.monotonic() + 20
    while metric(one_slot, "anysat_gateway_in_flight") < 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    with AnySatClient(one_slot, timeout_s=30, retries=0) as client, pytest.raises(c.Overloaded) as exc:
        client.embed(tile, dates=dates, patch_size=20)
    err = exc.value
    assert (err.status, err.code, err.field, err.limit, err.retry_after) == (429, "overloaded", "", "max_in_flight",
                                                                             1.0)
    assert isinstance(err, c.AnySatError) and "max_in_flight" in err.message
    holder.join(timeout=30)


def test_client_raises_typed_errors(one_slot: str, redis_url: str, reference_dir: Path) -> None:
    tile, dates = s2_tile()
    with AnySatClient(one_slot, timeout_s=30) as client:
        with pytest.raises(c.BadInput) as bad:
            client.embed(tile, dates=dates, patch_size=15)
        assert bad.value.status == 422 and bad.value.field == "patch_size"
        with pytest.raises(c.LimitExceeded) as limit:
            client.embed([tile] * 3, dates=[dates] * 3, patch_size=20)
        assert limit.value.status == 413 and limit.value.limit == "max_tiles_per_request"
        with pytest.raises(c.NotFound) as missing:
            client.mask(tile, head="nope", dates=dates)
        assert missing.value.field == "head"
    settings = settings_for(redis_url, reference_dir, api_keys=("k",))
    with serving(create_app(settings)) as url, AnySatClient(url, api_key="wrong") as client:
        with pytest.raises(c.Unauthorized) as denied:
            client.embed(tile, dates=dates, patch_size=20)
        assert denied.value.field == "X-API-Key"


def test_client_retries_503_within_its_budget(reference_dir: Path) -> None:
    """Redis unreachable: each attempt is a fast 503 (no Retry-After: backoff 0.5 s, 1 s); after ``retries`` the
    typed error is raised. A smaller total budget cuts the retries short."""
    nowhere = Path(tempfile.mkdtemp(prefix="anysat-c-"))
    try:
        settings = GatewaySettings(redis_url=f"unix://{nowhere / 'none.sock'}", queue_prefix=f"d{uuid.uuid4().hex[:6]}",
                                   checkpoint=reference_dir / "anysat_tiny_seed0.pth",
                                   _env_file=None)  # type: ignore[call-arg]
        tile, dates = s2_tile()
        route = 'route="/v1/embeddings",status="503"'
        with serving(create_app(settings)) as url:
            started = time.monotonic()
            with AnySatClient(url, timeout_s=10, retries=2) as client, pytest.raises(c.Unavailable) as exc:
                client.embed(tile, dates=dates, patch_size=20)
            assert time.monotonic() - started >= 1.5  # it waited 0.5 s, then 1 s
            assert exc.value.status == 503 and "Redis" in exc.value.message
            assert metric(url, "anysat_gateway_requests_total", route) == 3
            with AnySatClient(url, timeout_s=10, retries=5, max_retry_wait_s=1.0) as client, \
                    pytest.raises(c.Unavailable):
                client.embed(tile, dates=dates, patch_size=20)
            assert metric(url, "anysat_gateway_requests_total", route) == 3 + 2  # 0.5 s fits the budget, 1 s not
    finally:
        shutil.rmtree(nowhere, ignore_errors=True)
