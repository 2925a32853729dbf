"""The callers' side of the queue (the gateway): admit a request with its tensors, wait for its reply."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Mapping
from typing import cast

import numpy as np
import redis

from service.engine import payload
from service.engine.connection import connect, ensure_group
from service.engine.errors import DuplicateRequest, ErrorKind, Overloaded, ResultTimeout, failure
from service.engine.payload import Tensors
from service.engine.settings import QueueSettings

# Depth check, payload write and XADD in one atomic step, so concurrent callers cannot all slip
# past the limit together. Returns {status, depth}: 1 queued, 0 overloaded, -1 duplicate id.
_ENQUEUE = """
local depth = redis.call('XLEN', KEYS[1])
if depth >= tonumber(ARGV[1]) then return {0, depth} end
if not redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then return {-1, depth} end
redis.call('XADD', KEYS[1], '*', 'id', ARGV[4], 'key', ARGV[5], 'ref', KEYS[2],
           'deadline', ARGV[6], 'enq', ARGV[7])
return {1, depth}
"""

_BLPOP_SLICE_S = 1.0


class Producer:
    """``enqueue`` and ``wait_result``: everything a caller does with the queue."""

    def __init__(self, client: redis.Redis, settings: QueueSettings | None = None) -> None:
        self.redis = client
        self.settings = settings or QueueSettings()
        self._enqueue_script = client.register_script(_ENQUEUE)
        self._blpop_slice_s = _blocking_slice(client)
        ensure_group(client, self.settings)

    @classmethod
    def from_url(cls, url: str, settings: QueueSettings | None = None) -> Producer:
        return cls(connect(url), settings)

    def enqueue(
        self,
        batch_key: str,
        tensors: Mapping[str, np.ndarray],
        *,
        request_id: str | None = None,
        deadline_s: float,
    ) -> str:
        """Queue one request to be answered within ``deadline_s`` seconds; returns its id.

        Raises ``Overloaded`` (with ``retry_after_s``) when the queue is at ``max_queue_depth``,
        ``DuplicateRequest`` if ``request_id`` is already queued.
        """
        if deadline_s <= 0:
            raise ValueError(f"deadline_s must be positive, got {deadline_s}")
        if not batch_key:
            raise ValueError("batch_key must be a non-empty string")
        request_id = request_id or uuid.uuid4().hex
        s = self.settings
        now = time.time()
        ttl_ms = math.ceil((deadline_s + s.payload_ttl_margin_s) * 1000)
        status, depth = self._enqueue_script(
            keys=[s.stream, s.payload_key(request_id)],
            args=[
                s.max_queue_depth,
                payload.encode(tensors),
                ttl_ms,
                request_id,
                batch_key,
                repr(now + deadline_s),
                repr(now),
            ],
        )
        if status == 0:
            raise Overloaded(int(depth), s.max_queue_depth, s.overload_retry_after_s)
        if status == -1:
            raise DuplicateRequest(f"request id {request_id!r} is already queued")
        return request_id

    def wait_result(self, request_id: str, timeout_s: float) -> Tensors:
        """Block until the request's reply arrives; return its tensors or raise its typed error.

        Raises ``ResultTimeout`` if nothing arrives in ``timeout_s``, a ``RequestFailed``
        subclass (``RequestTimedOut``, ``DeadLettered``, ``BadRequest``, ...) for error replies.
        """
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        key = self.settings.reply_key(request_id)
        deadline = time.monotonic() + timeout_s
        while True:
            # Short BLPOPs, not one long one: redis-py clients have a socket timeout (5 s by
            # default) that a longer block would trip. Never below 10 ms: BLPOP 0 waits forever.
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ResultTimeout(request_id, timeout_s)
            popped = self.redis.blpop([key], timeout=max(0.01, min(remaining, self._blpop_slice_s)))
            if popped is not None:
                break
        tensors, meta = payload.decode(cast(bytes, popped[1]))  # connect() never decodes replies
        if meta.get("status") == "error":
            raise failure(request_id, ErrorKind(meta["kind"]), str(meta.get("message", "")))
        return tensors

    def depth(self) -> int:
        """Undelivered + in-flight entries: what admission control compares with the limit."""
        return int(self.redis.xlen(self.settings.stream))


def _blocking_slice(client: redis.Redis) -> float:
    pool = getattr(client, "connection_pool", None)
    socket_timeout = getattr(pool, "connection_kwargs", {}).get("socket_timeout", _BLPOP_SLICE_S)
    if socket_timeout is None:
        return _BLPOP_SLICE_S
    return max(0.01, min(_BLPOP_SLICE_S, socket_timeout / 2))
