"""Worker liveness in Redis: one key per worker, refreshed on a timer, expiring when it stops.

The beat runs on its own thread so a long model call (a first-request export can take minutes)
does not make a healthy worker look dead. The same tick renews the worker's leases on the entries
it holds, so they are reclaimed only when the whole process is gone, not merely busy.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass

import redis

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerInfo:
    consumer: str
    pid: int
    host: str
    started_at: float
    beat_at: float
    state: str  # "running" or "draining"
    answered: int


class Heartbeat:
    """Writes ``info()`` to ``key`` every ``interval_s`` with TTL ``ttl_s``; calls ``on_beat`` too."""

    def __init__(
        self,
        client: redis.Redis,
        key: str,
        interval_s: float,
        ttl_s: float,
        info: Callable[[], WorkerInfo],
        on_beat: Callable[[], None] | None = None,
    ) -> None:
        self._redis = client
        self._key = key
        self._interval_s = interval_s
        self._ttl_ms = int(ttl_s * 1000)
        self._info = info
        self._on_beat = on_beat
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat:{key}", daemon=True)

    def start(self) -> None:
        self.beat()  # visible before the first request is read, not one interval later
        self._thread.start()

    def beat(self) -> None:
        self._redis.set(self._key, json.dumps(asdict(self._info())), px=self._ttl_ms)

    def stop(self) -> None:
        """Stop beating and delete the key: a clean exit is not a death."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self._interval_s + 5)
        try:
            self._redis.delete(self._key)
        except redis.RedisError as exc:
            log.warning("could not delete heartbeat %s: %s", self._key, exc)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.beat()
                if self._on_beat is not None:
                    self._on_beat()
            except Exception as exc:  # Redis blips must not kill the beat; the TTL tells the truth
                log.warning("heartbeat %s failed: %s", self._key, exc)


def live_workers(client: redis.Redis, prefix: str = "anysat") -> list[WorkerInfo]:
    """Workers whose heartbeat has not expired (the gateway's readiness check). Sorted by name."""
    keys = sorted(client.scan_iter(match=f"{prefix}:worker:*", count=1000))
    if not keys:
        return []
    workers = []
    for raw in client.mget(keys):
        if raw is not None:  # expired between SCAN and MGET
            workers.append(WorkerInfo(**json.loads(raw)))
    return workers
