"""Prometheus instruments of the gateway (prefix ``anysat_gateway_``), in a private registry.

``route`` is the route *template* (``/v2/models/{name}/infer``), never the raw path, so clients
cannot grow the label set; unmatched paths count as ``unmatched``.

``watch`` adds what is read at scrape time: the queue in Redis (``QueueCollector``: depth, dead letters, live
workers, ``anysat_gateway_redis_up``) and the export cache's size on disk. docs/metrics.md lists every metric.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from service.engine.metrics import QueueCollector, package_version
from service.engine.settings import QueueSettings

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_SIZE_BUCKETS = tuple(float(4**k) for k in range(4, 15))  # 256 B ... 256 MiB


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        own = registry is None
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        if own:  # a shared registry may hold one already: process_* once per registry
            ProcessCollector(registry=r)
        self.requests = Counter(
            "anysat_gateway_requests", "HTTP requests answered, by route template and status code.",
            ["route", "status"], registry=r)
        self.latency = Histogram(
            "anysat_gateway_request_seconds", "End-to-end time from request start to the last byte sent.",
            ["route"], buckets=_LATENCY_BUCKETS, registry=r)
        self.request_size = Histogram(
            "anysat_gateway_request_bytes", "Request body size in bytes.", ["route"], buckets=_SIZE_BUCKETS,
            registry=r)
        self.rejected = Counter(
            "anysat_gateway_rejected", "Requests refused, by reason (error code or the limit's setting name).",
            ["reason"], registry=r)
        for reason in ("max_in_flight", "max_body_bytes", "max_queue_depth"):  # at 0 from the start, so rate() sees
            self.rejected.labels(reason=reason)  # the first refusals (a series born at 5 would show no increase)
        self.in_flight = Gauge(
            "anysat_gateway_in_flight", "Inference requests this gateway is working on (decoding, queued, waiting).",
            registry=r)
        self.worker_restarts = Counter(
            "anysat_gateway_worker_restarts", "Local worker processes restarted by `anysat serve` after they exited.",
            registry=r)
        self.build_info = Gauge(
            "anysat_gateway_build_info", "Always 1; labels say what this gateway serves.",
            ["version", "checkpoint_sha256"], registry=r)

    def watch(self, client: redis.Redis, queue: QueueSettings, export_dir: Path, checkpoint_sha256: str) -> None:
        """Report the queue (read from ``client`` at each scrape: give it short timeouts), the export cache
        under ``export_dir`` and what this gateway serves."""
        self.build_info.labels(version=package_version(), checkpoint_sha256=checkpoint_sha256).set(1)
        self.registry.register(QueueCollector(client, queue))
        self.registry.register(ExportCacheCollector(export_dir))

    def exposition(self, worker_metrics_dir: Path | None = None) -> bytes:
        """Text exposition of the gateway's metrics, plus local workers' summed from their directory."""
        out = generate_latest(self.registry)
        if worker_metrics_dir is not None and worker_metrics_dir.is_dir():
            workers = CollectorRegistry()
            MultiProcessCollector(workers, path=str(worker_metrics_dir))
            out += generate_latest(workers)
        return out


class ExportCacheCollector(Collector):
    """``anysat_export_cache_bytes`` and ``anysat_export_cache_exports``: the complete exports under the cache
    directory. Walked at most once per ``max_age_s`` (scrapes come every few seconds; exports change rarely)."""

    def __init__(self, root: Path, max_age_s: float = 15.0) -> None:
        self._root, self._max_age_s = root, max_age_s
        self._lock = threading.Lock()
        self._at, self._value = -float("inf"), (0, 0)

    def describe(self) -> list[GaugeMetricFamily]:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            if time.monotonic() - self._at >= self._max_age_s:
                self._value, self._at = _cache_size(self._root), time.monotonic()
            size, count = self._value
        yield GaugeMetricFamily("anysat_export_cache_bytes", "Bytes on disk of the export cache this gateway lists "
                                "in /v1/models (shared by the workers that mount it: max()).", value=float(size))
        yield GaugeMetricFamily("anysat_export_cache_exports", "Complete exports in that cache.", value=float(count))


def _cache_size(root: Path) -> tuple[int, int]:
    """(bytes, complete exports); directories starting with '.' (in progress, being removed) are skipped and
    files vanishing meanwhile (a prune) ignored."""
    size = count = 0
    try:
        entries = list(os.scandir(root))
    except OSError:  # no cache yet
        return 0, 0
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        count += os.path.isfile(os.path.join(entry.path, "manifest.json"))
        for folder, _dirs, files in os.walk(entry.path):
            for name in files:
                try:
                    size += os.stat(os.path.join(folder, name)).st_size
                except OSError:
                    continue
    return size, count
