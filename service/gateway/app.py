"""The gateway application: ``create_app(settings)`` assembles routers, middleware and error handlers.

Thin by design: decode, validate, enqueue, wait, encode. The model runs in the workers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.gateway.api import embeddings, health, jobs, masks, models, problems, v2
from service.gateway.api.admission import InFlightLimitMiddleware
from service.gateway.api.middleware import BodyLimitMiddleware, MetricsMiddleware, RequestIdMiddleware
from service.gateway.api.schemas import EmbeddingsJSON, MasksJSON
from service.gateway.settings import GatewaySettings
from service.gateway.state import Gateway
from service.gateway.v2_protocol import InferRequest

DESCRIPTION = """AnySat embeddings and masks for any subset of 11 Earth-observation sensors.

Inputs: **multipart/form-data** (one GeoTIFF or .npy part per sensor; time series as one GeoTIFF with
bands in dates x bands order or one part per date; dates as `<sensor>_dates`), **JSON** (arrays as
base64 little-endian bytes + dtype + shape), or **application/x-npz** (options in the query string).
Outputs: JSON (base64 arrays), `.npy`, `.npz` or GeoTIFF (`format` or `Accept`).
Errors: `{"error": {"code", "field", "message", "limit"?}}`; the Open Inference Protocol v2 lives under `/v2`.
"""


def _openapi(app: FastAPI) -> dict[str, Any]:
    # Request bodies are read by hand (three encodings on one route), so their JSON models are added here.
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (EmbeddingsJSON, MasksJSON, InferRequest):
            js = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(js.pop("$defs", {}))
            components[model.__name__] = js
        app.openapi_schema = schema
    return app.openapi_schema


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    gateway = Gateway(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # An admitted request holds one thread at a time (prepare, then inference.run blocking until its reply).
        # With Starlette's default 40 threads, requests past the 40th would wait for a thread, not in the queue:
        # the queue never reached its limit and the waiting bodies piled up in gateway memory.
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = max(limiter.total_tokens, gateway.threads)
        if settings.max_jobs_running > 0:
            gateway.coordinator.start()
        yield
        gateway.close()

    app = FastAPI(title="anysat-serve", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.gateway = gateway
    problems.install(app)
    for router in (embeddings.router, masks.router, jobs.router, models.router, health.router, v2.router):
        app.include_router(router)
    # Added last = outermost: metrics see every request, including those the body limit or the in-flight cap
    # refuses; the cap comes before anything reads the body.
    # Scene jobs upload whole rasters (streamed to disk, not held): their own, larger limit.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, metrics=gateway.metrics,
                       overrides={("POST", "/v1/jobs"): ("max_job_upload_bytes", settings.max_job_upload_bytes)})
    app.add_middleware(InFlightLimitMiddleware, max_in_flight=settings.max_in_flight,
                       retry_after_s=settings.overload_retry_after_s, metrics=gateway.metrics)
    app.add_middleware(MetricsMiddleware, metrics=gateway.metrics)
    # Outermost of ours: every response (413s and 429s included) carries X-Request-ID, and an exception nothing
    # handled is answered as a JSON 500 here, inside Starlette's ServerErrorMiddleware, which would drop the
    # connection.
    app.add_middleware(RequestIdMiddleware)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app
