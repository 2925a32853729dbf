"""Typed HTTP errors of the gateway and the one place where exceptions become responses.

Every error body names what was wrong: ``{"error": {"code", "field", "message", "limit"?}}`` on /v1,
``{"error": "<field>: <message>"}`` on /v2 (what the Open Inference Protocol and tritonclient read).
Queue failures map as ``service.errors`` suggests; Redis unreachable is a fast 503.
"""

from __future__ import annotations

import logging

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import errors as queue_errors

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error answered as-is: ``status``, a machine ``code``, the ``field`` at fault, a message."""

    status = 400
    code = "bad_request"

    def __init__(self, field: str, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, object]:
        return {"code": self.code, "field": self.field, "message": str(self)}


class InputError(ApiError):
    """The request is well-formed but its content is not what the model takes (422)."""

    status = 422
    code = "invalid_input"


class MalformedRequest(ApiError):
    """The body cannot be parsed at all: broken JSON, broken multipart, corrupt TIFF or .npy (400)."""

    status = 400
    code = "malformed"


class LimitExceeded(ApiError):
    """A configured limit was exceeded; ``limit`` is the setting's name (413 or 422)."""

    code = "limit_exceeded"

    def __init__(self, limit: str, field: str, message: str, status: int = 413) -> None:
        super().__init__(field, f"{message} (limit {limit})")
        self.limit = limit
        self.status = status

    def body(self) -> dict[str, object]:
        return {**super().body(), "limit": self.limit}


class UnsupportedMediaType(ApiError):
    status = 415
    code = "unsupported_media_type"


class NotAcceptable(ApiError):
    status = 406
    code = "not_acceptable"


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class Conflict(ApiError):
    """The request is valid but this deployment cannot honour it as configured."""

    status = 409
    code = "conflict"


class Unavailable(ApiError):
    status = 503
    code = "unavailable"


class ModelUnavailableError(ApiError):
    """A worker could not build or load the graph of the request's configuration (a server fault, not the input's)."""

    status = 503
    code = "model_unavailable"


class DeadlineExceeded(ApiError):
    status = 504
    code = "deadline_exceeded"


class TooManyRequests(ApiError):
    status = 429
    code = "overloaded"


class WorkerFailed(ApiError):
    """The worker pool failed on its side (dead-lettered, payload lost, result unencodable)."""

    status = 500
    code = "worker_failed"


def from_queue_error(exc: Exception) -> ApiError:
    """The HTTP error of a queue or Redis failure."""
    if isinstance(exc, queue_errors.Overloaded):
        retry = max(1, round(exc.retry_after_s))
        return TooManyRequests("", str(exc), headers={"Retry-After": str(retry)})
    if isinstance(exc, (queue_errors.ResultTimeout, queue_errors.RequestTimedOut)):
        return DeadlineExceeded("", f"request deadline passed: {exc}")
    if isinstance(exc, queue_errors.BadRequest):
        return InputError("", f"the model rejected this input: {exc.message}")
    if isinstance(exc, queue_errors.ModelUnavailable):
        return ModelUnavailableError("", f"this configuration cannot be served right now: {exc.message}")
    if isinstance(exc, queue_errors.RequestFailed):
        return WorkerFailed("", str(exc))
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        return Unavailable("", f"the queue (Redis) is unreachable: {type(exc).__name__}; retry shortly")
    if isinstance(exc, redis.RedisError):
        return Unavailable("", f"the queue (Redis) failed: {exc}")
    raise TypeError(f"not a queue error: {exc!r}")


def _is_v2(request: Request) -> bool:
    return request.url.path.startswith("/v2")


def render(request: Request, err: ApiError) -> JSONResponse:
    metrics = getattr(getattr(request.app.state, "gateway", None), "metrics", None)
    if metrics is not None:
        metrics.rejected.labels(reason=getattr(err, "limit", None) or err.code).inc()
    content: dict[str, object] = {"error": str(err) if _is_v2(request) else err.body()}
    return JSONResponse(content, status_code=err.status, headers=err.headers)


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

    async def redis_error(request: Request, exc: Exception) -> JSONResponse:
        return render(request, from_queue_error(exc))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(redis.RedisError, redis_error)
