"""Typed failures at the queue boundary; the gateway maps each to one HTTP status.

Suggested mapping: ``Overloaded`` -> 429 + Retry-After, ``ResultTimeout`` and
``RequestTimedOut`` -> 504, ``BadRequest`` -> 422, ``ModelUnavailable`` -> 503, ``DeadLettered`` /
``PayloadMissing`` / ``InternalError`` -> 500.
"""

from __future__ import annotations

from enum import Enum


class ErrorKind(str, Enum):
    """Why a request got an error reply instead of a result (travels in the reply metadata)."""

    TIMED_OUT = "timed_out"  # its deadline passed while it was queued; it was not run
    DEAD_LETTERED = "dead_lettered"  # delivered too many times (it keeps killing workers)
    BAD_REQUEST = "bad_request"  # the runner raised on this request alone
    PAYLOAD_MISSING = "payload_missing"  # its tensors expired before a worker read them
    INTERNAL = "internal_error"  # the worker failed on its side: a runner fault, or a result it could not encode
    MODEL_UNAVAILABLE = "model_unavailable"  # the graph of its configuration could not be built or loaded


class GraphUnavailable(RuntimeError):
    """Raised by a runner when a batch key's graph cannot be built or loaded (export failed, files unreadable,
    model server down): no request of the batch is at fault, so the worker fails the batch as a whole instead
    of rerunning its requests one by one (each rerun would try the export again)."""


class QueueError(Exception):
    """Base class of everything the queue raises on purpose."""


class Overloaded(QueueError):
    """Admission control refused the request: the queue is at its configured depth."""

    def __init__(self, depth: int, max_depth: int, retry_after_s: float) -> None:
        super().__init__(f"queue holds {depth} requests (limit {max_depth}); retry in {retry_after_s:g} s")
        self.depth = depth
        self.max_depth = max_depth
        self.retry_after_s = retry_after_s


class DuplicateRequest(QueueError):
    """A request with this id is already queued; request ids must be unique."""


class ResultTimeout(QueueError):
    """The caller stopped waiting; the request may still complete later (its reply then expires)."""

    def __init__(self, request_id: str, timeout_s: float) -> None:
        super().__init__(f"no result for request {request_id} within {timeout_s:g} s")
        self.request_id = request_id
        self.timeout_s = timeout_s


class RequestFailed(QueueError):
    """A worker answered with an error reply; ``kind`` says why."""

    kind: ErrorKind | None = None

    def __init__(self, request_id: str, kind: ErrorKind, message: str) -> None:
        super().__init__(f"request {request_id} failed ({kind.value}): {message}")
        self.request_id = request_id
        self.kind = kind
        self.message = message


class RequestTimedOut(RequestFailed):
    """Its deadline passed before a worker got to it; it was dropped, not run."""


class DeadLettered(RequestFailed):
    """It was delivered more than ``max_deliveries`` times and moved to the dead-letter stream."""


class BadRequest(RequestFailed):
    """The model raised on this request (run alone); the message is the exception's."""


class PayloadMissing(RequestFailed):
    """Its tensors were gone (expired) by the time a worker read it."""


class ModelUnavailable(RequestFailed):
    """The worker could not build or load the model graph of this request's configuration; retry later."""


class InternalError(RequestFailed):
    """The worker failed on its side (e.g. the model returned something unencodable)."""


_BY_KIND: dict[ErrorKind, type[RequestFailed]] = {
    ErrorKind.TIMED_OUT: RequestTimedOut,
    ErrorKind.DEAD_LETTERED: DeadLettered,
    ErrorKind.BAD_REQUEST: BadRequest,
    ErrorKind.PAYLOAD_MISSING: PayloadMissing,
    ErrorKind.INTERNAL: InternalError,
    ErrorKind.MODEL_UNAVAILABLE: ModelUnavailable,
}


def failure(request_id: str, kind: ErrorKind, message: str) -> RequestFailed:
    """The typed exception for an error reply of ``kind``."""
    return _BY_KIND[kind](request_id, kind, message)
