"""Prometheus metrics of a worker process (all names prefixed ``anysat_``).

Many workers, one view. Two ways, both supported, pick per deployment:

- **One machine, many processes** (``anysat serve``): set ``PROMETHEUS_MULTIPROC_DIR`` to an empty
  directory in the environment of every worker *before they start* (prometheus_client reads it at
  import). Each process then writes its values to its own mmap files in that directory, so none
  overwrites another, and whoever serves ``/metrics`` (the gateway) exposes their sum through
  ``multiprocess_registry()``. Counters and histograms sum; the gauges are ``liveall`` (one series per
  live worker, labelled ``pid``), so whoever starts the workers must call ``mark_process_dead`` when one
  exits (``anysat serve``'s supervisor does). Process RSS/CPU is not shared this way: give such workers a
  ``metrics_port`` to see theirs. Empty the directory between runs.
- **Many machines**: give each worker ``metrics_port`` and scrape each one; Prometheus tells them
  apart by ``instance``.

Each ``WorkerMetrics`` owns a private registry (not prometheus_client's global one), so several
workers in one process (tests) never collide on metric names.

``QueueCollector`` is the queue as Redis sees it (depth, dead letters, live workers), read at scrape time by
whoever serves it (the gateway): every gateway reports the same values, so aggregate those with ``max()``.
docs/metrics.md lists every metric.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from collections.abc import Iterator

import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from service.engine.errors import ErrorKind
from service.engine.heartbeat import live_workers
from service.engine.settings import QueueSettings

log = logging.getLogger(__name__)

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_INFER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class WorkerMetrics:
    """The worker's instruments. ``outcome`` is ``ok`` or an ``ErrorKind`` value."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        own = registry is None
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        if own:  # a shared registry may hold one already: process_* once per registry
            ProcessCollector(registry=r)
        self.batch_size = Histogram(
            "anysat_batch_size", "Requests per model call.", buckets=_BATCH_BUCKETS, registry=r
        )
        self.queue_wait = Histogram(
            "anysat_queue_wait_seconds",
            "Time from enqueue to the start of the model call that ran the request.",
            buckets=_WAIT_BUCKETS,
            registry=r,
        )
        self.inference_time = Histogram(
            "anysat_inference_seconds", "Wall time of one model call.", buckets=_INFER_BUCKETS, registry=r
        )
        self.requests = Counter("anysat_requests", "Requests answered, by outcome.", ["outcome"], registry=r)
        for outcome in ("ok", *(k.value for k in ErrorKind)):  # exported at 0 from the start: rate() then sees the
            self.requests.labels(outcome=outcome)  # first answers too, not only those after the first scrape
        self.export_cache_hits = Counter(
            "anysat_export_cache_hits", "Model exports found in the on-disk cache.", registry=r
        )
        self.export_cache_misses = Counter(
            "anysat_export_cache_misses", "Model exports built because the cache lacked them.", registry=r
        )
        self.graphs_unloaded = Counter(
            "anysat_graphs_unloaded",
            "Exported graphs unloaded to keep at most max_graphs in memory (reloaded from disk when needed).",
            registry=r,
        )
        self.reclaimed = Counter(
            "anysat_reclaimed", "Entries taken over from workers that died or stalled.", registry=r
        )
        self.dead_lettered = Counter(
            "anysat_dead_lettered", "Entries moved to the dead-letter stream.", registry=r
        )
        # Gauges: one series per live process in multiprocess mode (a dead worker's are removed by
        # mark_process_dead), the plain value otherwise.
        self.graphs_loaded = Gauge(
            "anysat_graphs_loaded", "Exported graphs this worker holds in memory (at most max_graphs).",
            registry=r, multiprocess_mode="liveall")
        self.build_info = Gauge(
            "anysat_worker_build_info", "Always 1; labels say what this worker serves.",
            ["version", "checkpoint_sha256", "runtime"], registry=r, multiprocess_mode="liveall")

    def set_build_info(self, checkpoint_sha256: str, runtime: str) -> None:
        self.build_info.labels(version=package_version(), checkpoint_sha256=checkpoint_sha256,
                               runtime=runtime).set(1)

    def count_outcomes(self, outcomes: list[str]) -> None:
        for outcome in outcomes:
            self.requests.labels(outcome=outcome).inc()

    def serve(self, port: int) -> None:
        """Expose this worker's registry on ``http://0.0.0.0:port/metrics`` (daemon thread)."""
        start_http_server(port, registry=self.registry)


def multiprocess_registry(path: str | None = None) -> CollectorRegistry:
    """A registry summing every worker's values from ``PROMETHEUS_MULTIPROC_DIR`` (or ``path``)."""
    directory = path or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        raise RuntimeError("set PROMETHEUS_MULTIPROC_DIR (or pass path) to aggregate worker metrics")
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    return registry


def package_version() -> str:
    try:
        return importlib.metadata.version("anysat-serve")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


class QueueCollector(Collector):
    """The queue's state read from Redis at each scrape (``anysat_queue_depth``, ``anysat_dead_letter_length``,
    ``anysat_live_workers``), plus ``anysat_gateway_redis_up``.

    Never fails a scrape: on any Redis error only ``anysat_gateway_redis_up 0`` is reported (the others are
    absent, not 0, so an outage does not also look like an empty queue with no workers). ``client`` should
    have short timeouts: the scrape waits for it."""

    def __init__(self, client: redis.Redis, settings: QueueSettings) -> None:
        self._redis, self._settings = client, settings

    def describe(self) -> list[GaugeMetricFamily]:
        return []  # no describe-time Redis round trip: registering must not need Redis

    def collect(self) -> Iterator[GaugeMetricFamily]:
        s = self._settings
        up = GaugeMetricFamily("anysat_gateway_redis_up", "1 if this gateway's last scrape-time read of Redis "
                               "succeeded, else 0.")
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                pipe.xlen(s.stream)
                pipe.xlen(s.dead_letter_stream)
                pipe.xpending(s.stream, s.group)
                length, dead, summary = pipe.execute(raise_on_error=False)
            if isinstance(length, Exception) or isinstance(dead, Exception):
                raise length if isinstance(length, Exception) else dead
            # XPENDING fails (NOGROUP) before any worker created the group: then nothing is pending.
            pending = int(summary["pending"]) if isinstance(summary, dict) else 0
            length, dead = int(length), int(dead)
            workers = live_workers(self._redis, s.prefix)
        except Exception as exc:  # whatever Redis does, the scrape answers: redis_up 0 says why values are absent
            log.warning("metrics: could not read the queue from Redis: %s", exc)
            up.add_metric([], 0.0)
            yield up
            return
        depth = GaugeMetricFamily("anysat_queue_depth", "Requests in the queue, by state: undelivered (no worker "
                                  "has read them) or pending (read by a worker, not yet acknowledged). Their sum is "
                                  "what admission compares with max_queue_depth. Same on every gateway: max().",
                                  labels=["state"])
        depth.add_metric(["undelivered"], float(max(0, length - pending)))
        depth.add_metric(["pending"], float(pending))
        yield depth
        yield GaugeMetricFamily("anysat_queue_max_depth", "The admission limit max_queue_depth (429 beyond it).",
                                value=float(s.max_queue_depth))
        yield GaugeMetricFamily("anysat_dead_letter_length", "Entries in the dead-letter stream (capped at about "
                                "dead_letter_maxlen). Same on every gateway: max().", value=float(dead))
        states = GaugeMetricFamily("anysat_live_workers", "Workers with a fresh heartbeat, by state (running, "
                                   "draining). Same on every gateway: max().", labels=["state"])
        counts = {"running": 0, "draining": 0}
        for w in workers:
            counts[w.state] = counts.get(w.state, 0) + 1
        for state, n in sorted(counts.items()):
            states.add_metric([state], float(n))
        yield states
        up.add_metric([], 1.0)
        yield up
