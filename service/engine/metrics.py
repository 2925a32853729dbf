"""Prometheus metrics of a worker process (all names prefixed ``anysat_``).

Many workers, one view. Two ways, both supported, pick per deployment:

- **One machine, many processes** (``anysat serve``): set ``PROMETHEUS_MULTIPROC_DIR`` to an empty
  directory in the environment of every worker *before they start* (prometheus_client reads it at
  import). Each process then writes its values to its own mmap files in that directory, so none
  overwrites another, and whoever serves ``/metrics`` (the gateway) exposes their sum through
  ``multiprocess_registry()``. Only counters and histograms are used, which sum correctly.
  Empty the directory between runs.
- **Many machines**: give each worker ``metrics_port`` and scrape each one; Prometheus tells them
  apart by ``instance``.

Each ``WorkerMetrics`` owns a private registry (not prometheus_client's global one), so several
workers in one process (tests) never collide on metric names.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_INFER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class WorkerMetrics:
    """The worker's instruments. ``outcome`` is ``ok`` or an ``ErrorKind`` value."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
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
