"""Prepared tiles -> queue -> results, within the request deadline. Blocking: call from a thread."""

from __future__ import annotations

import time

import numpy as np
import redis

from service.api.problems import from_queue_error
from service.errors import QueueError
from service.gateway import Gateway
from service.prepare import PreparedTile

# A worker answers `timed_out` at the deadline; wait a little past it so that answer, not our own
# timeout, is what the caller sees.
_GRACE_S = 2.0


def run(gateway: Gateway, tiles: list[PreparedTile]) -> list[dict[str, np.ndarray]]:
    deadline_s = gateway.settings.request_deadline_s
    deadline = time.monotonic() + deadline_s
    try:
        queue = gateway.queue()
        ids = [queue.enqueue(t.config.key(), t.tensors, deadline_s=deadline_s) for t in tiles]
        results = []
        for request_id in ids:
            remaining = deadline - time.monotonic() + _GRACE_S
            results.append(queue.wait_result(request_id, timeout_s=max(0.05, remaining)))
    except (QueueError, redis.RedisError) as exc:
        raise from_queue_error(exc) from None
    return results
