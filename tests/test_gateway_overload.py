"""Admission over HTTP: a real uvicorn gateway, the session's real Redis and a real (slow) model worker.

Overload is answered 429 + Retry-After — by the queue's depth (``max_queue_depth``, read from the environment as
deployments set it) or at the door by the gateway's in-flight cap (``max_in_flight``, before any body is read) —
never by requests waiting in the gateway. Nothing is lost: every request gets its right answer or a 429.
"""

from __future__ import annotations

import asyncio
import base64
import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from gateway_fixtures import WorkerPool, serving, wait_ready
from test_gateway_errors import body

from model import create_model
from model.encoder import AnySat
from service.gateway.app import create_app
from service.gateway.settings import GatewaySettings
from service.runtime.runner import ModelRunner


class SlowRunner:
    """The real model runner, each batch held ``sleep_s`` first: a worker too slow for the load sent."""

    def __init__(self, inner: ModelRunner, sleep_s: float) -> None:
        self.inner = inner
        self.sleep_s = sleep_s

    def run(self, batch_key: str, requests: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        time.sleep(self.sleep_s)
        return self.inner.run(batch_key, requests)


@dataclass
class Answer:
    status: int | None  # None: no answer (transport error or client timeout)
    seconds: float
    headers: dict[str, str]
    json: Any


@pytest.fixture(scope="module")
def tiny_model(reference_dir: Path) -> AnySat:
    return create_model(checkpoint=reference_dir / "anysat_tiny_seed0.pth")


@contextmanager
def slow_gateway(settings: GatewaySettings, model: AnySat, sleep_s: float) -> Iterator[str]:
    """``settings``' gateway under uvicorn with one worker thread whose every batch takes ``sleep_s`` longer."""
    assert settings.redis_url is not None
    pool = WorkerPool(settings.redis_url, settings.queue_prefix, SlowRunner(ModelRunner(model), sleep_s))
    pool.start(1)
    try:
        with serving(create_app(settings)) as url:
            wait_ready(url)
            yield url
    finally:
        pool.stop()


def settings_for(redis_url: str, reference_dir: Path, **limits: Any) -> GatewaySettings:
    return GatewaySettings(redis_url=redis_url, queue_prefix=f"o{uuid.uuid4().hex[:8]}",
                           checkpoint=reference_dir / "anysat_tiny_seed0.pth", request_deadline_s=60,
                           _env_file=None, **limits)  # type: ignore[call-arg]


async def _burst(url: str, requests: list[tuple[str, dict[str, Any]]], timeout_s: float) -> list[Answer]:
    """All ``(path, httpx kwargs)`` at once, each on its own connection; every answer with its latency."""
    limits = httpx.Limits(max_connections=len(requests), max_keepalive_connections=len(requests))
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout_s) as client:
        async def one(path: str, kwargs: dict[str, Any]) -> Answer:
            started = time.perf_counter()
            try:
                r = await client.post(path, **kwargs)
            except httpx.HTTPError:
                return Answer(None, time.perf_counter() - started, {}, None)
            return Answer(r.status_code, time.perf_counter() - started, dict(r.headers), r.json())

        return list(await asyncio.gather(*(one(p, k) for p, k in requests)))


def burst(url: str, n: int, timeout_s: float = 60) -> list[Answer]:
    return asyncio.run(_burst(url, [("/v1/embeddings", {"json": body()})] * n, timeout_s))


def embedding(answer_json: dict[str, Any]) -> np.ndarray:
    e = answer_json["tiles"][0]["embedding"]
    return np.frombuffer(base64.b64decode(e["data"]), dtype=e["dtype"]).reshape(e["shape"])


def metric(url: str, name: str, labels: str = "") -> float:
    """One sample of the gateway's /metrics (``labels``: e.g. ``reason="max_in_flight"``); 0 if absent."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    selector = re.escape(name + (f"{{{labels}}}" if labels else ""))
    m = re.search(rf"^{selector} (\S+)$", text, re.MULTILINE)
    return float(m[1]) if m else 0.0


def reference(url: str) -> np.ndarray:
    r = httpx.post(f"{url}/v1/embeddings", json=body(), timeout=60)
    assert r.status_code == 200, r.text
    return embedding(r.json())


def check_none_lost(answers: list[Answer], expected: np.ndarray) -> tuple[list[Answer], list[Answer]]:
    """Every answer is a 200 with the right embedding or a 429: no 5xx, no timeout. Returns (200s, 429s)."""
    statuses = [a.status for a in answers]
    assert set(statuses) <= {200, 429}, statuses
    ok = [a for a in answers if a.status == 200]
    for a in ok:
        np.testing.assert_allclose(embedding(a.json), expected, rtol=1e-4, atol=1e-5)
    return ok, [a for a in answers if a.status == 429]


def test_queue_depth_from_the_environment_refuses_with_retry_after(
        monkeypatch: pytest.MonkeyPatch, redis_url: str, reference_dir: Path, tiny_model: AnySat) -> None:
    """ANYSAT_MAX_QUEUE_DEPTH=4 reaches admission: 20 concurrent requests to a slow worker -> some 429 with
    Retry-After (ANYSAT_OVERLOAD_RETRY_AFTER_S), none lost, the rest 200 with the right answer."""
    monkeypatch.setenv("ANYSAT_MAX_QUEUE_DEPTH", "4")
    monkeypatch.setenv("ANYSAT_OVERLOAD_RETRY_AFTER_S", "3")
    monkeypatch.setenv("ANYSAT_REDIS_URL", redis_url)
    monkeypatch.setenv("ANYSAT_QUEUE_PREFIX", f"q{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("ANYSAT_CHECKPOINT", str(reference_dir / "anysat_tiny_seed0.pth"))
    settings = GatewaySettings(_env_file=None)  # type: ignore[call-arg]
    assert (settings.max_queue_depth, settings.max_in_flight) == (4, 32)  # the in-flight cap is not what refuses
    with slow_gateway(settings, tiny_model, sleep_s=1.0) as url:
        expected = reference(url)
        ok, refused = check_none_lost(burst(url, 20), expected)
        assert refused and len(ok) >= 4, [a.status for a in ok + refused]
        for a in refused:
            assert a.headers["retry-after"] == "3"
            assert a.json["error"]["code"] == "overloaded" and "limit 4" in a.json["error"]["message"]
            assert a.json["error"]["limit"] == "max_queue_depth"
        assert metric(url, "anysat_gateway_rejected_total", 'reason="max_in_flight"') == 0
        assert metric(url, "anysat_gateway_rejected_total", 'reason="max_queue_depth"') == len(refused)
        assert metric(url, "anysat_gateway_in_flight") == 0


def test_in_flight_cap_refuses_at_once_and_the_gauge_returns_to_zero(
        redis_url: str, reference_dir: Path, tiny_model: AnySat) -> None:
    """max_in_flight=4, a worker taking >= 2 s a batch, 40 concurrent requests: the refused are answered in a
    fraction of the batch time, the admitted get the right answer, the gauge never passes 4 and ends at 0."""
    slow_s = 2.0
    settings = settings_for(redis_url, reference_dir, max_in_flight=4, overload_retry_after_s=2)
    with slow_gateway(settings, tiny_model, sleep_s=slow_s) as url:
        expected = reference(url)
        seen: list[float] = []
        done = threading.Event()

        def watch_gauge() -> None:
            while not done.is_set():
                seen.append(metric(url, "anysat_gateway_in_flight"))
                time.sleep(0.05)

        watcher = threading.Thread(target=watch_gauge, daemon=True)
        watcher.start()
        try:
            answers = burst(url, 40)
        finally:
            done.set()
            watcher.join(timeout=15)
        ok, refused = check_none_lost(answers, expected)
        assert len(refused) >= 20 and len(ok) >= 4, (len(ok), len(refused))
        assert min(a.seconds for a in ok) >= slow_s  # each admitted request waited for a slow batch
        assert max(a.seconds for a in refused) < slow_s / 2, sorted(a.seconds for a in refused)[-3:]
        for a in refused:
            assert a.headers["retry-after"] == "2"
            assert a.json["error"] == {"code": "overloaded", "field": "", "limit": "max_in_flight",
                                       "message": a.json["error"]["message"],
                                       "request_id": a.headers["x-request-id"]}
        assert max(seen) == 4, seen
        assert metric(url, "anysat_gateway_in_flight") == 0
        assert metric(url, "anysat_gateway_rejected_total", 'reason="max_in_flight"') == len(refused)
        # Refused requests are still counted under their route, not as unmatched paths.
        assert metric(url, "anysat_gateway_requests_total", 'route="/v1/embeddings",status="429"') == len(refused)


def test_refused_before_the_body_is_read_on_every_inference_route(
        redis_url: str, reference_dir: Path, tiny_model: AnySat) -> None:
    """With the cap taken, a body that could not even be parsed is refused 429 (it is never read), in the v2
    shape on /v2; health, metrics and the model listing still answer."""
    settings = settings_for(redis_url, reference_dir, max_in_flight=2)
    with slow_gateway(settings, tiny_model, sleep_s=3.0) as url:
        holders = threading.Thread(target=burst, args=(url, 2), daemon=True)
        holders.start()
        deadline = time.monotonic() + 20
        while metric(url, "anysat_gateway_in_flight") < 2:
            assert time.monotonic() < deadline, "the two slow requests never got in"
            time.sleep(0.02)
        garbage = {"content": b'{"tiles": [', "headers": {"content-type": "application/json"}}
        p = settings.queue_prefix
        for path in ("/v1/embeddings", "/v1/masks", f"/v2/models/{p}-tile/infer",
                     f"/v2/models/{p}-patch/versions/1/infer"):
            r = httpx.post(f"{url}{path}", **garbage, timeout=10)  # type: ignore[arg-type]
            assert r.status_code == 429, (path, r.status_code, r.text)
            assert r.headers["retry-after"] == "1"
            error = r.json()["error"]
            if path.startswith("/v2"):
                assert isinstance(error, str) and "max_in_flight" in error
            else:
                assert error["limit"] == "max_in_flight"
        for path in ("/readyz", "/healthz", "/metrics", "/v1/models"):
            assert httpx.get(f"{url}{path}", timeout=30).status_code == 200, path
        holders.join(timeout=30)
        assert metric(url, "anysat_gateway_in_flight") == 0
        # Once the slots are free, the same garbage reaches the decoder again.
        assert httpx.post(f"{url}/v1/embeddings", **garbage, timeout=10).status_code == 400  # type: ignore[arg-type]


def test_gauge_survives_errors_and_clients_that_leave(redis_url: str, reference_dir: Path,
                                                      tiny_model: AnySat) -> None:
    """A request that fails (422) frees its slot at once; one whose client gives up holds it while the gateway
    still works on it, and frees it when that work ends."""
    slow_s = 2.0
    settings = settings_for(redis_url, reference_dir, max_in_flight=4)
    with slow_gateway(settings, tiny_model, sleep_s=slow_s) as url:
        assert httpx.post(f"{url}/v1/embeddings", json={"patch_size": 20}, timeout=10).status_code == 422
        assert metric(url, "anysat_gateway_in_flight") == 0
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/embeddings", json=body(), timeout=0.5)
        assert metric(url, "anysat_gateway_in_flight") == 1  # the gateway is still waiting for its answer
        deadline = time.monotonic() + slow_s + 20
        while metric(url, "anysat_gateway_in_flight") != 0:
            assert time.monotonic() < deadline, "the departed client's slot was never freed"
            time.sleep(0.05)
        assert httpx.post(f"{url}/v1/embeddings", json=body(), timeout=60).status_code == 200


def test_admitted_requests_reach_the_queue_past_the_default_thread_pool(
        redis_url: str, redis_client: redis.Redis, reference_dir: Path, tiny_model: AnySat) -> None:
    """max_in_flight above Starlette's 40 threads and redis-py's 100 pooled connections: all 110 admitted requests
    wait in the queue (its depth reaches 110), none waits in the gateway for a thread or fails for a connection —
    the issue's 300 requests were held at 40, below the queue's limit."""
    n = 110
    settings = settings_for(redis_url, reference_dir, max_in_flight=n)
    stream = settings.queue.stream
    with slow_gateway(settings, tiny_model, sleep_s=6.0) as url:
        expected = reference(url)
        depths: list[int] = []
        done = threading.Event()

        def watch_depth() -> None:
            while not done.is_set():
                depths.append(int(redis_client.xlen(stream)))
                time.sleep(0.02)

        watcher = threading.Thread(target=watch_depth, daemon=True)
        watcher.start()
        try:
            answers = burst(url, n)
        finally:
            done.set()
            watcher.join(timeout=15)
        ok, refused = check_none_lost(answers, expected)
        assert len(ok) == n and not refused
        assert max(depths) == n, max(depths)
