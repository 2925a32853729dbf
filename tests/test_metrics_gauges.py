"""The gauges the dashboard draws: queue state read from a real Redis at scrape time, the export cache on disk,
build info, process metrics, and the live gauges of workers in multiprocess mode (a real second process)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.parser import text_string_to_metric_families

from service.engine.connection import connect
from service.engine.heartbeat import Heartbeat, WorkerInfo
from service.engine.metrics import QueueCollector, WorkerMetrics
from service.engine.queue import RedisQueue
from service.engine.settings import QueueSettings
from service.gateway.metrics import ExportCacheCollector, GatewayMetrics

REPO = Path(__file__).resolve().parents[1]


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def _queue_registry(client: redis.Redis, settings: QueueSettings) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(QueueCollector(client, settings))
    return registry


def test_queue_gauges_follow_redis(redis_client: redis.Redis, key_prefix: str) -> None:
    settings = QueueSettings(prefix=key_prefix, max_queue_depth=50)
    registry = _queue_registry(redis_client, settings)
    before = _samples(registry)  # no stream, no group yet: a scrape still answers, all zero
    assert before[("anysat_queue_depth", (("state", "undelivered"),))] == 0
    assert before[("anysat_gateway_redis_up", ())] == 1

    queue = RedisQueue(redis_client, settings)
    for _ in range(5):
        queue.enqueue("k", {"x": np.zeros(3, np.float32)}, deadline_s=30)
    taken = queue.read("c1", count=2, block_ms=None)
    assert len(taken) == 2
    beat = Heartbeat(redis_client, settings.heartbeat_key("c1"), 5, 10,
                     lambda: WorkerInfo("c1", os.getpid(), "h", time.time(), time.time(), "running", 0))
    beat.beat()
    redis_client.xadd(settings.dead_letter_stream, {"id": "r"})

    s = _samples(registry)
    assert s[("anysat_queue_depth", (("state", "undelivered"),))] == 3
    assert s[("anysat_queue_depth", (("state", "pending"),))] == 2
    assert s[("anysat_queue_max_depth", ())] == 50
    assert s[("anysat_dead_letter_length", ())] == 1
    assert s[("anysat_live_workers", (("state", "running"),))] == 1
    assert s[("anysat_live_workers", (("state", "draining"),))] == 0

    beat.stop()  # a clean exit deletes the heartbeat: the worker is gone from the next scrape
    assert _samples(registry)[("anysat_live_workers", (("state", "running"),))] == 0


def test_unreachable_redis_answers_the_scrape_with_redis_up_0() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = connect(f"redis://127.0.0.1:{port}/0", socket_connect_timeout=0.5, socket_timeout=1.0)
    registry = _queue_registry(client, QueueSettings())
    started = time.monotonic()
    s = _samples(registry)
    assert time.monotonic() - started < 3
    assert s == {("anysat_gateway_redis_up", ()): 0.0}  # the rest absent, not a misleading 0


def test_export_cache_size_counts_complete_exports_only(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "manifest.json").write_text("{}")
    (tmp_path / "a" / "model.onnx").write_bytes(b"x" * 1000)
    (tmp_path / ".tmp-b").mkdir()  # an export in progress
    (tmp_path / ".tmp-b" / "model.onnx").write_bytes(b"x" * 5000)
    registry = CollectorRegistry()
    registry.register(ExportCacheCollector(tmp_path, max_age_s=0))
    s = _samples(registry)
    assert s[("anysat_export_cache_bytes", ())] == 1002
    assert s[("anysat_export_cache_exports", ())] == 1
    assert _samples(_cache_registry(tmp_path / "missing"))[("anysat_export_cache_bytes", ())] == 0


def _cache_registry(root: Path) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(ExportCacheCollector(root, max_age_s=0))
    return registry


def test_gateway_exposes_build_info_and_its_process(redis_url: str, key_prefix: str, tmp_path: Path) -> None:
    m = GatewayMetrics()
    m.watch(connect(redis_url), QueueSettings(prefix=key_prefix), tmp_path, "abc123")
    s = _samples(m.registry)
    [info] = [labels for (name, labels) in s if name == "anysat_gateway_build_info"]
    assert dict(info)["checkpoint_sha256"] == "abc123" and dict(info)["version"]
    assert s[("process_resident_memory_bytes", ())] > 10e6
    assert ("anysat_gateway_in_flight", ()) in s and s[("anysat_gateway_redis_up", ())] == 1


def test_worker_exposes_graphs_loaded_build_info_and_its_process() -> None:
    m = WorkerMetrics()
    m.set_build_info("abc", "onnx")
    m.graphs_loaded.set(2)
    s = _samples(m.registry)
    assert s[("anysat_graphs_loaded", ())] == 2
    assert s[("anysat_worker_build_info", (("checkpoint_sha256", "abc"), ("runtime", "onnx"),
                                           ("version", dict(next(k for n, k in s if n == "anysat_worker_build_info"))
                                            ["version"])))] == 1
    assert s[("process_cpu_seconds_total", ())] >= 0


_CHILD = """
import sys, time
from service.engine.metrics import WorkerMetrics
m = WorkerMetrics()
m.graphs_loaded.set(int(sys.argv[1]))
m.set_build_info("sha", "onnx")
m.requests.labels(outcome="ok").inc(3)
print("ready", flush=True)
sys.stdin.readline()
"""


def test_multiprocess_gauges_are_per_live_worker(tmp_path: Path) -> None:
    """Under ``anysat serve`` workers write to PROMETHEUS_MULTIPROC_DIR: the gateway's view has one gauge series
    per live worker (``pid``), counters summed, and a dead worker's gauges leave with mark_process_dead."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    children = [subprocess.Popen([sys.executable, "-c", _CHILD, str(n)], env=env, cwd=REPO, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True) for n in (1, 3)]
    try:
        for c in children:
            assert c.stdout is not None and c.stdout.readline().strip() == "ready"
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(tmp_path))
        s = _samples(registry)
        loaded = {dict(k)["pid"]: v for (n, k), v in s.items() if n == "anysat_graphs_loaded"}
        assert loaded == {str(children[0].pid): 1, str(children[1].pid): 3}
        assert s[("anysat_requests_total", (("outcome", "ok"),))] == 6
        assert sum(1 for (n, _k) in s if n == "anysat_worker_build_info") == 2
    finally:
        for c in children:
            assert c.stdin is not None
            c.stdin.write("\n")
            c.stdin.close()
            c.wait(timeout=30)
    mark_process_dead(children[0].pid, str(tmp_path))
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))
    loaded = {dict(k)["pid"]: v for (n, k), v in _samples(registry).items() if n == "anysat_graphs_loaded"}
    assert loaded == {str(children[1].pid): 3}
    assert json.dumps(loaded)  # plain values, nothing lazy


_SHORT_LIVED = """
import time
from service.engine.metrics import WorkerMetrics
WorkerMetrics().graphs_loaded.set(1)
time.sleep(0.3)
"""


def test_supervisor_removes_an_exited_workers_gauges(tmp_path: Path) -> None:
    """``anysat serve``'s supervisor: a worker that exits and is restarted leaves no gauge series behind."""
    from service.gateway.supervisor import WorkerSupervisor

    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    supervisor = WorkerSupervisor([sys.executable, "-c", _SHORT_LIVED], 1, env, REPO)
    supervisor.start()
    try:
        deadline = time.monotonic() + 30
        while supervisor.status()["restarts"] < 2:  # two exits seen, two restarts done
            assert time.monotonic() < deadline, supervisor.status()
            time.sleep(0.1)
    finally:
        supervisor.stop()
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))
    assert [k for (n, k) in _samples(registry) if n == "anysat_graphs_loaded"] == []
    assert not list(tmp_path.glob("gauge_live*"))
