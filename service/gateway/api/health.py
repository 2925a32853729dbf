"""``/healthz`` (process alive), ``/readyz`` (Redis reachable + a fresh worker heartbeat), ``/metrics``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from service.gateway.api.deps import GatewayDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "alive"}


@router.get("/readyz", summary="Redis reachable and at least one live worker; else 503")
async def readyz(gateway: GatewayDep) -> JSONResponse:
    ready, detail = await run_in_threadpool(gateway.readiness)
    body: dict[str, Any] = {"status": "ready" if ready else "not ready", **detail}
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", summary="Prometheus metrics (gateway, plus local workers under anysat serve)")
async def metrics(gateway: GatewayDep) -> Response:
    data = await run_in_threadpool(gateway.metrics.exposition, gateway.settings.worker_metrics_dir)
    return Response(data, media_type=CONTENT_TYPE_LATEST)
