"""Processes that look after themselves: ``anysat serve`` restarts a killed worker (and /readyz says so
meanwhile); a worker started before Redis waits for it, and gives up with a clear message when told to."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from gateway_fixtures import REPO
from test_gateway_errors import body
from test_gateway_overload import metric
from test_gateway_serve import serving

from service.engine.queue import RedisQueue
from service.engine.redis_server import EmbeddedRedis
from service.engine.settings import QueueSettings


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ANYSAT_")}


def _poll(url: str, want: int, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        r = httpx.get(f"{url}/readyz", timeout=5)
        if r.status_code == want:
            return r.json()
        assert time.monotonic() < deadline, f"/readyz stayed {r.status_code} ({r.text}), wanted {want}"
        time.sleep(0.05)


def test_serve_restarts_a_killed_worker(reference_dir: Path) -> None:
    env = {**_clean_env(), "ANYSAT_CHECKPOINT": str(reference_dir / "anysat_tiny_seed0.pth")}
    with serving(env) as url:
        ready = httpx.get(f"{url}/readyz", timeout=5).json()
        (pid,) = ready["local_workers"]["pids"]
        # The pid is the supervised worker, not something else on the machine.
        assert b"service.runtime.worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
        assert metric(url, "anysat_gateway_worker_restarts_total") == 0
        os.kill(pid, signal.SIGKILL)
        down = _poll(url, 503, timeout_s=10)  # its heartbeat outlives it, but it no longer counts
        assert down["local_workers"]["running"] == 0 and pid not in down["local_workers"]["pids"]
        up = _poll(url, 200, timeout_s=120)  # restarted after 1 s of backoff, ready once it beats
        (new_pid,) = up["local_workers"]["pids"]
        assert new_pid != pid and up["local_workers"]["restarts"] == 1
        assert metric(url, "anysat_gateway_worker_restarts_total") == 1
        r = httpx.post(f"{url}/v1/embeddings", json=body(), timeout=60)
        assert r.status_code == 200, r.text


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory under /tmp: unix socket paths must stay under ~107 bytes, which pytest's tmp_path may not."""
    d = Path(tempfile.mkdtemp(prefix="anysat-w-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _worker(redis_url: str, prefix: str, log: Path, *flags: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "service.engine.worker", "--runner", "runners:make_runner", "--redis-url", redis_url,
           "--queue-prefix", prefix, "--consumer", f"c-{prefix}", *flags]
    env = {**_clean_env(), "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
    with log.open("wb") as out:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def test_worker_started_before_redis_waits_for_it(short_dir: Path) -> None:
    prefix = f"w{uuid.uuid4().hex[:8]}"
    log = short_dir / "worker.log"
    server = EmbeddedRedis(short_dir / "redis")
    proc = _worker(server.url, prefix, log)  # nothing listens at that socket yet
    try:
        time.sleep(1.5)
        assert proc.poll() is None, log.read_text()
        assert "waiting for Redis" in log.read_text()
        server.start()
        queue = RedisQueue.from_url(server.url, QueueSettings(prefix=prefix))
        x = np.arange(6, dtype=np.float32)
        request_id = queue.enqueue("k", {"x": x}, deadline_s=30)
        result = queue.wait_result(request_id, timeout_s=30)
        np.testing.assert_array_equal(result["y"], 2 * x)
        queue.redis.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        server.stop()


def test_worker_gives_up_after_connect_timeout(short_dir: Path) -> None:
    log = short_dir / "worker.log"
    started = time.monotonic()
    proc = _worker(f"unix://{short_dir / 'nobody.sock'}", "gone", log, "--connect-timeout-s", "1")
    try:
        assert proc.wait(timeout=60) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    text = log.read_text()
    assert "waiting for Redis" in text and "connect_timeout_s" in text and "giving up" in text, text
    assert time.monotonic() - started < 30


def test_supervisor_does_not_restart_a_worker_that_refuses_its_settings(tmp_path: Path) -> None:
    """Exit 3 (a device the worker cannot use) or 2 (invalid settings) would repeat on every restart: the slot is
    left stopped and reported as refused; any other exit is restarted."""
    from service.gateway.supervisor import WorkerSupervisor

    for code, refused in ((3, True), (2, True), (1, False)):
        sup = WorkerSupervisor([sys.executable, "-c", f"import sys; sys.exit({code})"], 1, dict(os.environ), tmp_path)
        sup.start()
        try:
            deadline = time.monotonic() + 10
            while sup.status()["refused"] == 0 and sup.status()["restarts"] == 0:
                assert time.monotonic() < deadline, sup.status()
                time.sleep(0.05)
            time.sleep(1.5)  # past the first backoff: a restart would have happened by now
            status = sup.status()
            assert (status["refused"], status["restarts"] == 0) == ((1, True) if refused else (0, False)), status
        finally:
            sup.stop()
