"""The state of one gateway process: settings, the Redis client and queue, metrics, heads."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from service.engine.connection import connect
from service.engine.heartbeat import live_workers
from service.engine.producer import Producer
from service.gateway.heads import HeadRegistry
from service.gateway.jobs.coordinator import JobCoordinator
from service.gateway.jobs.store import JobStore
from service.gateway.metrics import GatewayMetrics
from service.gateway.normalization import RecordedStats, checkpoint_stats
from service.gateway.settings import GatewaySettings
from service.gateway.supervisor import WorkerSupervisor
from service.runtime.model_info import describe_checkpoint

# BLPOP slices in Producer.wait_result are half the socket timeout (at most 1 s); this leaves room.
_SOCKET_TIMEOUT_S = 5.0
_HOST = socket.gethostname()  # local workers' heartbeats carry this host
# Threads for everything but admitted inference work (health, metrics, /v1/models, FastAPI's sync dependencies):
# Starlette's default pool size, kept on top of max_in_flight.
THREAD_RESERVE = 40


class Gateway:
    def __init__(self, settings: GatewaySettings, metrics: GatewayMetrics | None = None) -> None:
        if not settings.redis_url:
            raise ValueError("redis_url is required: set ANYSAT_REDIS_URL, or run `anysat serve`, which starts "
                             "a private Redis when it is unset")
        self.settings = settings
        self.metrics = metrics or GatewayMetrics()
        self.heads = HeadRegistry(settings.resolved_heads_dir(), Path(settings.resolved_checkpoint()))
        self.heads.encoder_sha256()  # hash the checkpoint now, not inside the first request
        # What the served checkpoint recorded from training (normalize=auto), read once from its header.
        self.checkpoint_stats: RecordedStats = checkpoint_stats(Path(settings.resolved_checkpoint()))
        # No retries: an unreachable Redis must turn into a fast 503, not seconds of backoff; the pool
        # reconnects by itself on the next request once Redis is back.
        # One connection per thread that may use Redis at once (each admitted request blocks on one while it
        # waits for its reply): redis-py's default cap (100) would answer MaxConnectionsError past it.
        self.threads = settings.max_in_flight + THREAD_RESERVE
        # Each running job holds a connection waiting for a tile's reply, plus its lease renewal and the poller.
        self.redis = connect(
            settings.redis_url, socket_connect_timeout=settings.redis_timeout_s, socket_timeout=_SOCKET_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0), max_connections=self.threads + 2 * settings.max_jobs_running + 2)
        self.queue_settings = settings.queue
        # Scrapes read the queue on a client of their own with short timeouts: a scrape must answer well within
        # Prometheus's timeout even when Redis is gone (anysat_gateway_redis_up 0, then).
        self._scrape_redis = connect(settings.redis_url, socket_connect_timeout=0.5, socket_timeout=1.0,
                                     retry=Retry(NoBackoff(), 0), max_connections=4)
        self.metrics.watch(self._scrape_redis, self.queue_settings, settings.export_dir,
                           self.heads.encoder_sha256() or "unknown")
        self._queue: Producer | None = None
        self._jobs = JobStore(self.redis, settings.queue_prefix, ttl_s=settings.job_ttl_s)
        self.coordinator = JobCoordinator(self._jobs, self.queue, settings)
        self.supervisor: WorkerSupervisor | None = None  # set by `anysat serve` when it runs local workers

    def queue(self) -> Producer:
        # Built on first use, not at startup: the gateway must come up (and answer 503) while Redis is down.
        if self._queue is None:
            self._queue = Producer(self.redis, self.queue_settings)
        return self._queue

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready = Redis answers and at least one worker heartbeat is fresh and running. Under ``anysat serve``
        that heartbeat must be a running local worker's (matched by pid): a killed worker's heartbeat outlives it
        by up to its TTL, and its restarted successor is not ready before it beats."""
        local = self.supervisor.status() if self.supervisor is not None else None
        try:
            self.redis.ping()
            workers = live_workers(self.redis, self.settings.queue_prefix)
        except redis.RedisError as exc:
            return False, {"redis": f"unreachable: {type(exc).__name__}", "workers": None, "local_workers": local}
        detail = {"redis": "ok", "workers": len(workers),
                  "worker_states": sorted({w.state for w in workers}), "local_workers": local}
        serving = [w for w in workers if w.state == "running"]
        if local is not None:
            serving = [w for w in serving if w.pid in local["pids"] and w.host == _HOST]
        return bool(serving), detail

    def jobs(self) -> JobStore:
        return self._jobs

    def checkpoint(self) -> dict[str, Any]:
        return describe_checkpoint(Path(self.settings.resolved_checkpoint()))

    def close(self) -> None:
        self.coordinator.close()
        self.redis.close()
        self._scrape_redis.close()
