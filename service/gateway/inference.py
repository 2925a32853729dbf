"""Prepared tiles -> queue -> results, within the request deadline. Blocking: call from a thread.

Queue and Redis failures propagate as they are (``service.engine.errors``, ``redis.RedisError``); the
gateway's error handlers (``service.gateway.api.problems``) turn them into HTTP answers."""

from __future__ import annotations

import time

import numpy as np

from service.gateway.prepare import PreparedTile
from service.gateway.state import Gateway

# A worker answers `timed_out` at the deadline; wait a little past it so that answer, not our own
# timeout, is what the caller sees.
_GRACE_S = 2.0


def run(gateway: Gateway, tiles: list[PreparedTile]) -> list[dict[str, np.ndarray]]:
    deadline_s = gateway.settings.request_deadline_s
    deadline = time.monotonic() + deadline_s
    queue = gateway.queue()
    ids = [queue.enqueue(t.config.key(), t.tensors, deadline_s=deadline_s) for t in tiles]
    results = []
    for request_id in ids:
        remaining = deadline - time.monotonic() + _GRACE_S
        results.append(queue.wait_result(request_id, timeout_s=max(0.05, remaining)))
    return results
