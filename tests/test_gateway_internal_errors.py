"""Server faults over real HTTP (uvicorn, Redis, workers): a 500 is the JSON error envelope with a request id,
its traceback is logged under that id, and the client's connection stays usable (keep-alive) for the next
request. Every response carries ``X-Request-ID`` (the client's, if sane). A worker's own failure is a 500
``internal_error``; a model's input error stays a 422.

The unhandled fault is provoked honestly: a gateway method is replaced by one raising RuntimeError, which is
the fault under test (a bug in the gateway)."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from gateway_fixtures import Service, WorkerPool, serving, wait_ready
from test_gateway_errors import body

from service.gateway.app import create_app
from service.gateway.settings import GatewaySettings


def _boom(*_args: Any, **_kwargs: Any) -> Any:
    raise RuntimeError("checkpoint reader exploded at /srv/anysat/secret.pth")


def _local_port(response: httpx.Response) -> int:
    """The client-side port of the connection that carried ``response`` (same port = same connection)."""
    return response.extensions["network_stream"].get_extra_info("client_addr")[1]


def test_unhandled_exception_is_a_json_500_with_request_id_and_the_connection_survives(
    gateway_service: Service, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(gateway_service.app.state.gateway, "checkpoint", _boom)
    with httpx.Client(base_url=gateway_service.url, timeout=30) as client, \
            caplog.at_level(logging.ERROR, logger="service.gateway.api.problems"):
        first = client.get("/healthz")
        port = _local_port(first)
        r = client.get("/v1/models", headers={"X-Request-ID": "client-id-42"})
        assert r.status_code == 500, r.text
        assert r.headers["content-type"] == "application/json"
        assert r.headers["x-request-id"] == "client-id-42"
        assert r.headers.get("connection", "").lower() != "close"
        error = r.json()["error"]
        assert error["code"] == "internal_error" and error["field"] == "" and error["request_id"] == "client-id-42"
        assert "RuntimeError" in error["message"] and "/srv/anysat" not in error["message"]
        # The same connection answers the next request (uvicorn did not drop it).
        again = client.get("/healthz")
        assert again.status_code == 200 and _local_port(again) == port
        # The v2 protocol's own error shape, and a request id the client did not give (or gave insanely).
        p = gateway_service.settings.queue_prefix
        v2 = client.get(f"/v2/models/{p}-tile", headers={"X-Request-ID": "bad id\twith spaces"})
        assert v2.status_code == 500 and isinstance(v2.json()["error"], str)
        generated = v2.headers["x-request-id"]
        assert len(generated) == 32 and generated in v2.json()["error"]
        assert client.get("/healthz").status_code == 200 and _local_port(client.get("/healthz")) == port
    logged = [rec for rec in caplog.records if "client-id-42" in rec.getMessage()]
    assert logged and logged[0].exc_info is not None and "exploded" in str(logged[0].exc_info[1])
    assert any(generated in rec.getMessage() for rec in caplog.records)


def test_every_response_carries_a_request_id(gateway_service: Service) -> None:
    with httpx.Client(base_url=gateway_service.url, timeout=30) as client:
        ok = client.get("/healthz")
        refused = client.post("/v1/embeddings", json={"patch_size": 15, "tiles": []})
        too_big = client.post("/v1/embeddings", content=b"x" * (8 * 2**20 + 1),
                              headers={"content-type": "application/json", "x-request-id": "big-1"})
    assert len(ok.headers["x-request-id"]) == 32
    assert refused.status_code == 422 and refused.json()["error"]["request_id"] == refused.headers["x-request-id"]
    assert too_big.status_code == 413 and too_big.headers["x-request-id"] == "big-1"
    assert too_big.json()["error"]["request_id"] == "big-1"
    assert ok.headers["x-request-id"] != refused.headers["x-request-id"]


class RaisingRunner:
    """A runner that fails every request the way ``exc`` says: the fault under test."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def run(self, batch_key: str, requests: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        raise self.exc


@pytest.mark.parametrize(("exc", "status", "code"), [
    (RuntimeError("CUDA error: an illegal memory access at /opt/model"), 500, "internal_error"),
    (MemoryError(), 500, "internal_error"),
    (ValueError("s2: expected 10 channels"), 422, "invalid_input"),
], ids=["runtime-error", "out-of-memory", "input-error"])
def test_worker_failure_is_500_unless_the_input_was_at_fault(
    redis_url: str, reference_dir: Path, exc: Exception, status: int, code: str
) -> None:
    prefix = f"f{uuid.uuid4().hex[:8]}"
    settings = GatewaySettings(redis_url=redis_url, queue_prefix=prefix,
                               checkpoint=reference_dir / "anysat_tiny_seed0.pth",
                               _env_file=None)  # type: ignore[call-arg]
    pool = WorkerPool(redis_url, prefix, RaisingRunner(exc))  # type: ignore[arg-type]
    pool.start(1)
    try:
        with serving(create_app(settings)) as url, httpx.Client(base_url=url, timeout=60) as client:
            wait_ready(url)
            r = client.post("/v1/embeddings", json=body())
            assert r.status_code == status, r.text
            error = r.json()["error"]
            assert error["code"] == code and error["request_id"] == r.headers["x-request-id"]
            if status == 500:
                assert type(exc).__name__ in error["message"] and "/opt/model" not in error["message"]
            assert client.get("/readyz").status_code == 200  # worker and gateway still up
    finally:
        pool.stop()
