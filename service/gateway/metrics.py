"""Prometheus instruments of the gateway (prefix ``anysat_gateway_``), in a private registry.

``route`` is the route *template* (``/v2/models/{name}/infer``), never the raw path, so clients
cannot grow the label set; unmatched paths count as ``unmatched``.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_SIZE_BUCKETS = tuple(float(4**k) for k in range(4, 15))  # 256 B ... 256 MiB


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
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
        self.in_flight = Gauge(
            "anysat_gateway_in_flight", "Inference requests this gateway is working on (decoding, queued, waiting).",
            registry=r)
        self.worker_restarts = Counter(
            "anysat_gateway_worker_restarts", "Local worker processes restarted by `anysat serve` after they exited.",
            registry=r)

    def exposition(self, worker_metrics_dir: Path | None = None) -> bytes:
        """Text exposition of the gateway's metrics, plus local workers' summed from their directory."""
        out = generate_latest(self.registry)
        if worker_metrics_dir is not None and worker_metrics_dir.is_dir():
            workers = CollectorRegistry()
            MultiProcessCollector(workers, path=str(worker_metrics_dir))
            out += generate_latest(workers)
        return out
