"""Both roles of the queue on one client, for tools and tests that play caller and worker at once
(benchmarks, the test suite). The gateway holds a ``Producer`` and a worker a ``Consumer``."""

from __future__ import annotations

import redis

from service.engine.connection import connect
from service.engine.consumer import Consumer
from service.engine.producer import Producer
from service.engine.settings import QueueSettings


class RedisQueue(Producer, Consumer):
    def __init__(self, client: redis.Redis, settings: QueueSettings | None = None) -> None:
        Producer.__init__(self, client, settings)
        Consumer.__init__(self, client, self.settings, ensure=False)

    @classmethod
    def from_url(cls, url: str, settings: QueueSettings | None = None) -> RedisQueue:
        return cls(connect(url), settings)
