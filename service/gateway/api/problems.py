"""The one place where exceptions become responses (the errors themselves: ``service.gateway.errors``).

Every error body names what was wrong: ``{"error": {"code", "field", "message", "limit"?, "request_id"}}`` on
/v1, ``{"error": "<field>: <message>"}`` on /v2 (what the Open Inference Protocol and tritonclient read).
Queue failures map as ``service.engine.errors`` suggests; Redis unreachable is a fast 503; a worker's own
failure (``internal_error``) is a 500.

Anything else raised while answering — a bug — is ``unhandled``: a 500 in the same envelope (code
``internal_error``), its traceback logged with the request id. It is not registered as FastAPI's
``Exception`` handler: Starlette runs that one in ``ServerErrorMiddleware``, which re-raises after answering,
and uvicorn then drops the client's connection. ``RequestIdMiddleware`` calls it instead, and returns.
"""

from __future__ import annotations

import logging
import math

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from service.engine import errors as queue_errors
from service.gateway.errors import (
    ApiError,
    DeadlineExceeded,
    InputError,
    InternalServerError,
    ModelUnavailableError,
    TooManyRequests,
    Unavailable,
    WorkerFailed,
)

log = logging.getLogger(__name__)


def from_queue_error(exc: Exception) -> ApiError:
    """The HTTP error of a queue or Redis failure."""
    if isinstance(exc, queue_errors.Overloaded):
        retry = max(1, math.ceil(exc.retry_after_s))  # as the in-flight 429: whole seconds, never early
        return TooManyRequests("", str(exc), limit="max_queue_depth", headers={"Retry-After": str(retry)})
    if isinstance(exc, (queue_errors.ResultTimeout, queue_errors.RequestTimedOut)):
        return DeadlineExceeded("", f"request deadline passed: {exc}")
    if isinstance(exc, queue_errors.BadRequest):
        return InputError("", f"the model rejected this input: {exc.message}")
    if isinstance(exc, queue_errors.ModelUnavailable):
        return ModelUnavailableError("", f"this configuration cannot be served right now: {exc.message}")
    if isinstance(exc, queue_errors.InternalError):
        return InternalServerError("", f"the worker failed on its side, not because of this input: {exc.message}")
    if isinstance(exc, queue_errors.RequestFailed):
        return WorkerFailed("", str(exc))
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        return Unavailable("", f"the queue (Redis) is unreachable: {type(exc).__name__}; retry shortly")
    if isinstance(exc, redis.RedisError):
        return Unavailable("", f"the queue (Redis) failed: {exc}")
    raise TypeError(f"not a queue error: {exc!r}")


def request_id(request: Request) -> str:
    """The id ``RequestIdMiddleware`` gave this request (also its ``X-Request-ID`` response header)."""
    return str(request.scope.get("state", {}).get("request_id", ""))


def render(request: Request, err: ApiError) -> JSONResponse:
    if err.status >= 500:  # the server's side: worth a line an operator can find by the client's request id
        log.error("request %s %s %s answered %d %s: %s", request_id(request), request.method, request.url.path,
                  err.status, err.code, err)
    return _response(request, err)


def _response(request: Request, err: ApiError) -> JSONResponse:
    metrics = getattr(getattr(request.app.state, "gateway", None), "metrics", None)
    if metrics is not None:
        metrics.rejected.labels(reason=getattr(err, "limit", None) or err.code).inc()
    return error_response(request.scope, err)


def error_response(scope: Scope, err: ApiError) -> JSONResponse:
    """The answer to ``err`` (an ASGI app, so pure middleware can send it too): the /v1 envelope with the request
    id, or the /v2 string. Counting it in the metrics is the caller's."""
    v2 = str(scope.get("path", "")).startswith("/v2")
    rid = str(scope.get("state", {}).get("request_id", ""))
    body = str(err) if v2 else {**err.body(), "request_id": rid}
    return JSONResponse({"error": body}, status_code=err.status, headers=err.headers)


def unhandled(request: Request, exc: Exception) -> JSONResponse:
    """The 500 of an exception no handler knows (a bug): the envelope, the traceback in the log."""
    rid = request_id(request)
    log.error("request %s %s %s failed: unhandled %s", rid, request.method, request.url.path,
              type(exc).__name__, exc_info=exc)
    err = InternalServerError("", f"internal error ({type(exc).__name__}); the server log has it under "
                                  f"request id {rid}")
    return _response(request, err)


def install(app: FastAPI) -> None:
    """Register the handlers: ours, FastAPI's validation errors, Starlette's HTTP errors, Redis."""

    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return render(request, exc)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        field = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path"))
        return render(request, InputError(field, str(first.get("msg"))))

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        # Starlette raises 400 for broken multipart; 404/405 for unknown routes and methods.
        err = ApiError("", str(exc.detail))
        err.status = exc.status_code
        err.code = {400: "malformed", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        err.headers = dict(exc.headers or {})
        return render(request, err)

    async def queue_error(request: Request, exc: Exception) -> JSONResponse:
        return render(request, from_queue_error(exc))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(redis.RedisError, queue_error)
    app.add_exception_handler(queue_errors.QueueError, queue_error)
