"""Readiness follows the workers and Redis; API keys guard inference only; metrics are exposed."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from gateway_fixtures import Service, WorkerPool, serving, wait_ready
from test_gateway_errors import body

from service.engine.redis_server import EmbeddedRedis
from service.gateway.app import create_app
from service.gateway.settings import GatewaySettings
from service.runtime.runner import ModelRunner


def test_readiness_flips_when_workers_stop_and_return(gateway_service: Service) -> None:
    url = gateway_service.url
    assert httpx.get(f"{url}/readyz", timeout=5).json()["workers"] >= 1
    gateway_service.workers.stop()
    try:
        wait_ready(url, want=503)
        assert httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 503
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200  # alive, just not ready
    finally:
        gateway_service.workers.start(1)
    wait_ready(url, want=200)
    assert httpx.post(f"{url}/v1/embeddings", json=body(), timeout=60).status_code == 200


def test_api_keys_guard_inference_only(gateway_service: Service) -> None:
    settings = gateway_service.settings.model_copy(update={"api_keys": ("k1", "k2")})
    with serving(create_app(settings)) as url:
        assert httpx.post(f"{url}/v1/embeddings", json=body(), timeout=30).status_code == 401
        r = httpx.post(f"{url}/v1/embeddings", json=body(), headers={"X-API-Key": "wrong"}, timeout=30)
        assert r.status_code == 401 and r.json()["error"]["field"] == "X-API-Key"
        assert httpx.post(f"{url}/v1/masks", json={"head": "x", "tiles": []}, timeout=30).status_code == 401
        v2 = f"{url}/v2/models/{settings.queue_prefix}-tile/infer"
        assert httpx.post(v2, json={"inputs": []}, timeout=30).status_code == 401
        r = httpx.post(f"{url}/v1/embeddings", json=body(), headers={"X-API-Key": "k2"}, timeout=60)
        assert r.status_code == 200, r.text
        for open_path in ("/healthz", "/readyz", "/metrics", "/v1/models", "/v2/health/live", "/openapi.json"):
            assert httpx.get(f"{url}{open_path}", timeout=10).status_code == 200, open_path


def test_api_keys_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANYSAT_API_KEYS", "a, b")
    monkeypatch.setenv("ANYSAT_MAX_TILES_PER_REQUEST", "3")
    s = GatewaySettings()
    assert s.api_keys == ("a", "b") and s.max_tiles_per_request == 3


def test_metrics_and_models(gateway_service: Service) -> None:
    url = gateway_service.url
    httpx.post(f"{url}/v1/embeddings", json={"patch_size": 20}, timeout=10)
    text = httpx.get(f"{url}/metrics", timeout=10).text
    assert 'anysat_gateway_requests_total{route="/v1/embeddings",status="422"}' in text
    assert "anysat_gateway_request_seconds_bucket" in text and "anysat_gateway_request_bytes_bucket" in text
    assert 'anysat_gateway_rejected_total{reason="invalid_input"}' in text
    models = httpx.get(f"{url}/v1/models", timeout=30).json()
    assert models["checkpoint"]["embed_dim"] == 256 and models["checkpoint"]["size"] == "tiny"
    assert {h["name"] for h in models["heads"]} == {"landcover-l8", "species"}
    assert len(models["sensors"]) == 11 and models["limits"]["max_tiles_per_request"] == 8


def test_redis_down_is_a_fast_503_and_the_gateway_recovers(tmp_path: Path, reference_dir: Path) -> None:
    from model import create_model

    directory = tmp_path / "r"
    redis_server = EmbeddedRedis(directory)
    redis_url = redis_server.start()
    settings = GatewaySettings(redis_url=redis_url, queue_prefix="down", request_deadline_s=20,
                               _env_file=None)  # type: ignore[call-arg]
    pool = WorkerPool(redis_url, "down", ModelRunner(create_model(checkpoint=reference_dir / "anysat_tiny_seed0.pth")))
    pool.start(1)
    try:
        with serving(create_app(settings)) as url:
            wait_ready(url)
            redis_server.stop()
            started = time.monotonic()
            assert httpx.get(f"{url}/readyz", timeout=10).status_code == 503
            r = httpx.post(f"{url}/v1/embeddings", json=body(), timeout=10)
            assert r.status_code == 503 and "Redis" in r.json()["error"]["message"]
            assert time.monotonic() - started < 3
            redis_server = EmbeddedRedis(directory)  # same socket path: Redis "comes back"
            redis_server.start()
            wait_ready(url, timeout_s=30)
            assert httpx.post(f"{url}/v1/embeddings", json=body(), timeout=60).status_code == 200
    finally:
        pool.stop()
        redis_server.stop()
