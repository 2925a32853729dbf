"""Pure ASGI middleware: request ids and the last-resort 500, the body-size limit (before anything is parsed)
and request metrics."""

from __future__ import annotations

import re
import time
import uuid

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.gateway.api import problems
from service.gateway.errors import LimitExceeded
from service.gateway.metrics import GatewayMetrics

REQUEST_ID_HEADER = b"x-request-id"
# A client's own id is kept when it is short and plain (it lands in logs and headers); else one is made.
_SANE_ID = re.compile(rb"^[A-Za-z0-9][A-Za-z0-9._:~+/=-]{0,127}$")


class RequestIdMiddleware:
    """Outermost: every request gets an id (the client's ``X-Request-ID`` if sane, else a new one) in
    ``scope["state"]["request_id"]`` and as the ``X-Request-ID`` response header; error bodies and log lines
    carry it. An exception nothing handled is answered here (``problems.unhandled``: a 500 in the JSON error
    envelope, traceback logged) and not re-raised, so the server keeps the connection open for the next
    request, which is what a client's pool expects. Once a response has started nothing can be sent: re-raised."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(REQUEST_ID_HEADER, b"")
        rid = given.decode() if _SANE_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != REQUEST_ID_HEADER]
                message = {**message, "headers": [*headers, (REQUEST_ID_HEADER, rid.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if started:
                raise
            await problems.unhandled(Request(scope), exc)(scope, receive, send_with_id)


class BodyTooLarge(Exception):
    """Raised from ``receive`` when the streamed body passes the limit (Content-Length lied or was absent)."""


async def _send_413(scope: Scope, receive: Receive, send: Send, limit: int, name: str = "max_body_bytes") -> None:
    # Connection: close, as the rest of the body is not read.
    err = LimitExceeded(name, "body", f"larger than {limit} bytes", headers={"Connection": "close"})
    await problems.error_response(scope, err)(scope, receive, send)


class BodyLimitMiddleware:
    """413 for bodies over ``max_bytes``: at once from Content-Length, else while streaming. ``overrides`` gives
    some (method, path) their own limit, named by its setting (scene uploads are streamed to disk, not held)."""

    def __init__(self, app: ASGIApp, max_bytes: int, metrics: GatewayMetrics | None = None,
                 overrides: dict[tuple[str, str], tuple[str, int]] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics
        self.overrides = overrides or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        name, limit = self.overrides.get((scope.get("method", ""), scope.get("path", "")),
                                         ("max_body_bytes", self.max_bytes))
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            self._count(name)
            await _send_413(scope, receive, send, limit, name)
            return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            self._count(name)
            await _send_413(scope, receive, send, limit, name)

    def _count(self, name: str) -> None:
        if self.metrics is not None:
            self.metrics.rejected.labels(reason=name).inc()


class MetricsMiddleware:
    """Requests by route template and status, end-to-end latency, request body size."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers if the app dies before starting a response
        size = 0

        async def counting_receive() -> Message:
            nonlocal size
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
            return message

        async def status_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, counting_receive, status_send)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            m = self.metrics
            m.requests.labels(route=route, status=str(status)).inc()
            m.latency.labels(route=route).observe(time.perf_counter() - started)
            m.request_size.labels(route=route).observe(size)
