"""Admission at the door: at most ``max_in_flight`` inference requests per gateway process, the rest 429 at once.

A pure ASGI middleware, so a refused request costs no body read, no decoding and no thread: under overload
the gateway's memory stays bounded by ``max_in_flight`` requests, instead of every waiting request's body and
decoded arrays piling up in front of a thread pool. The queue's own limit (``max_queue_depth``, all gateways
together) still applies behind it.

Only inference routes are counted: health, metrics and model listing always answer.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from service.gateway.api import problems
from service.gateway.errors import TooManyRequests
from service.gateway.metrics import GatewayMetrics


@dataclass(frozen=True)
class InferenceRoute:
    """An inference endpoint's template; set as ``scope["route"]`` on a refusal, as the router would have, so
    request metrics label it by its template (they read ``.path``)."""

    path: str
    pattern: re.Pattern[str]


# The inference endpoints (the work that holds memory and a queue slot), matched as the router matches them
# (a path parameter is one segment).
INFERENCE_ROUTES = tuple(InferenceRoute(t, re.compile("^" + re.sub(r"\{[a-z]+\}", "[^/]+", t) + "$")) for t in (
    "/v1/embeddings", "/v1/masks", "/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"))


def inference_route(scope: Scope) -> InferenceRoute | None:
    if scope.get("method") != "POST":
        return None
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root):  # behind a proxy's prefix (uvicorn --root-path), match what routes see
        path = path[len(root):]
    return next((r for r in INFERENCE_ROUTES if r.pattern.match(path)), None)


def retry_after(seconds: float) -> str:
    """Retry-After as HTTP wants it: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


class InFlightLimitMiddleware:
    """429 + Retry-After for an inference request that would exceed ``max_in_flight``, before its body is read.

    The count lives on the event loop: no lock, and it is released in ``finally`` whatever ends the request
    (an answer, an error, a client that went away, a cancelled task).
    """

    def __init__(self, app: ASGIApp, max_in_flight: int, retry_after_s: float,
                 metrics: GatewayMetrics | None = None) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.retry_after = retry_after(retry_after_s)
        self.metrics = metrics
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (route := inference_route(scope)) is None:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight:
            scope["route"] = route  # what the router would set: request metrics label it by its template
            if self.metrics is not None:
                self.metrics.rejected.labels(reason="max_in_flight").inc()
            await self._send_429(scope, receive, send)
            return
        self._add(1)
        try:
            await self.app(scope, receive, send)
        finally:
            self._add(-1)

    def _add(self, n: int) -> None:
        self.in_flight += n
        if self.metrics is not None:
            self.metrics.in_flight.set(self.in_flight)

    async def _send_429(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = (f"this gateway is working on {self.max_in_flight} requests, its limit (max_in_flight); "
                   f"retry in {self.retry_after} s")
        # No "connection: close": uvicorn discards the unread body and keeps the connection for the retry.
        err = TooManyRequests("", message, limit="max_in_flight", headers={"Retry-After": self.retry_after})
        await problems.error_response(scope, err)(scope, receive, send)
