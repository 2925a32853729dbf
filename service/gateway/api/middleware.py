"""Pure ASGI middleware: the body-size limit (before anything is parsed) and request metrics."""

from __future__ import annotations

import json
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.gateway.metrics import GatewayMetrics


class BodyTooLarge(Exception):
    """Raised from ``receive`` when the streamed body passes the limit (Content-Length lied or was absent)."""


async def _send_413(send: Send, limit: int, path: str) -> None:
    message = f"body: larger than {limit} bytes (limit max_body_bytes)"
    error: object = message if path.startswith("/v2") else {
        "code": "limit_exceeded", "field": "body", "message": message, "limit": "max_body_bytes"}
    body = json.dumps({"error": error}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """413 for bodies over ``max_bytes``: at once from Content-Length, else while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int, metrics: GatewayMetrics | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            self._count()
            await _send_413(send, self.max_bytes, scope.get("path", ""))
            return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
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
            self._count()
            await _send_413(send, self.max_bytes, scope.get("path", ""))

    def _count(self) -> None:
        if self.metrics is not None:
            self.metrics.rejected.labels(reason="max_body_bytes").inc()


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
