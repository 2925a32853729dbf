"""Typed errors of the gateway: what was wrong with a request, and the HTTP status it is answered with.

A leaf: it imports neither FastAPI nor Redis, so request decoding, preparation and the heads registry can
raise these anywhere, and only ``service.gateway.api.problems`` turns them into responses. Every error names
the ``field`` at fault.
"""

from __future__ import annotations


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

    def __init__(self, limit: str, field: str, message: str, status: int = 413,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(field, f"{message} (limit {limit})", headers=headers)
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
    """Refused by admission control; ``limit`` names the setting that refused it (``max_queue_depth``)."""

    status = 429
    code = "overloaded"

    def __init__(self, field: str, message: str, *, limit: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(field, message, headers=headers)
        self.limit = limit

    def body(self) -> dict[str, object]:
        return {**super().body(), "limit": self.limit}


class WorkerFailed(ApiError):
    """The worker pool failed on its side (dead-lettered, payload lost)."""

    status = 500
    code = "worker_failed"


class InternalServerError(ApiError):
    """A fault of the server, not of the request: a bug, out of memory, a runner that raised something other than
    an input error. The message names what failed, never the server's paths; the log has the traceback."""

    status = 500
    code = "internal_error"
