"""The deployment's processes without Docker, watched by a real Prometheus: what tests/test_dashboard_live.py
proves the dashboard and alerts on, and what draws the README's picture.

    python -m benchmarks.dashboard --out docs/img/dashboard.png     # stack up, load, proof, alert round trip, PNG

One real redis-server (unix socket) with Debian's ``prometheus-redis-exporter`` in front of it, one gateway
(``anysat serve`` with ``ANYSAT_REDIS_URL`` set: no local workers), two ``anysat worker --metrics-port`` processes
(the demo encoder, ONNX Runtime, one shared export cache) and ``prometheus`` with a generated config: the compose
file's jobs with static 127.0.0.1 targets instead of DNS, and the rules of deploy/prometheus/alerts.yml. The load
is the shipped TreeSatAI tile (embeddings) and the Landsat 8 crop (mask GeoTIFF), plus one burst past
``max_in_flight`` so the refusal panels have something to draw. Every port is a free one on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import numpy as np

from service.engine.redis_server import EmbeddedRedis

REPO = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
CHECKPOINT = REPO / "artifacts" / "demo" / "encoder.safetensors"
HEADS = REPO / "artifacts" / "demo" / "heads"
TREESAT = REPO / "examples" / "data" / "treesatai-ts" / "Abies_alba_1_1005_WEFL_NLF"
SCRAPE_S = 1  # faster than the compose stack's 5 s so a test sees alerts within seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def binaries() -> dict[str, str | None]:
    return {"prometheus": shutil.which("prometheus"),
            "redis_exporter": shutil.which("prometheus-redis-exporter") or shutil.which("redis_exporter")}


@dataclass
class Proc:
    name: str
    argv: list[str]
    env: dict[str, str]
    log: IO[bytes]
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, cwd=REPO, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def stop(self, timeout_s: float = 30) -> None:
        p = self.process
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)  # its own session: only what it started
            p.wait(timeout=10)


@dataclass
class Stack:
    """Start with ``start()``; ``stop()`` ends every process it started (by PID) and removes its files."""

    workers: int = 2
    max_in_flight: int = 4
    runtime: str = "onnx"
    # Exporting the Landsat mask configuration takes about a minute here: longer than the default deadline.
    request_deadline_s: float = 240.0
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="anysat-dash-")))
    procs: dict[str, Proc] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    redis: EmbeddedRedis | None = None

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['gateway']}"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['prometheus']}"

    def _env(self) -> dict[str, str]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("ANYSAT_", "PROMETHEUS_MULTIPROC"))}
        return {**clean, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "ANYSAT_CHECKPOINT": str(CHECKPOINT),
                "ANYSAT_HEADS_DIR": str(HEADS), "ANYSAT_EXPORT_DIR": str(self.root / "exports")}

    def _proc(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        proc = Proc(name, argv, env or self._env(), open(self.root / f"{name}.log", "ab"))  # noqa: SIM115
        self.procs[name] = proc
        proc.start()
        return proc

    def start(self) -> None:
        bins = binaries()
        missing = [k for k, v in bins.items() if v is None]
        if missing:
            raise RuntimeError(f"not installed: {', '.join(missing)} (apt-get install -y --no-install-recommends "
                               "prometheus prometheus-redis-exporter)")
        for name in ("gateway", "prometheus", "redis_exporter", *(f"worker{i}" for i in range(self.workers))):
            self.ports[name] = free_port()
        self.redis = EmbeddedRedis(self.root / "redis")
        url = self.redis.start()
        self._proc("redis_exporter", [str(bins["redis_exporter"]), f"-redis.addr={url}",
                                      f"-web.listen-address=127.0.0.1:{self.ports['redis_exporter']}"])
        self.start_workers()
        env = {**self._env(), "ANYSAT_REDIS_URL": url, "ANYSAT_MAX_IN_FLIGHT": str(self.max_in_flight),
               "ANYSAT_REQUEST_DEADLINE_S": str(self.request_deadline_s)}
        self._proc("gateway", [sys.executable, "-m", "service.gateway.serve", "--port", str(self.ports["gateway"]),
                               "--log-level", "warning"], env)
        self._write_prometheus_config()
        self._proc("prometheus", [str(bins["prometheus"]), f"--config.file={self.root / 'prometheus.yml'}",
                                  f"--storage.tsdb.path={self.root / 'tsdb'}",
                                  f"--web.listen-address=127.0.0.1:{self.ports['prometheus']}"])
        self.wait_ready()

    def start_workers(self) -> None:
        assert self.redis is not None
        for i in range(self.workers):
            self._proc(f"worker{i}", [sys.executable, "-m", "service.runtime.worker", "--redis-url", self.redis.url,
                                      "--metrics-port", str(self.ports[f"worker{i}"]), "--runtime", self.runtime,
                                      "--log-level", "WARNING"])

    def stop_workers(self) -> None:
        for i in range(self.workers):
            self.procs[f"worker{i}"].stop()

    def _write_prometheus_config(self) -> None:
        workers = ", ".join(f'"127.0.0.1:{self.ports[f"worker{i}"]}"' for i in range(self.workers))
        shutil.copy(PROMETHEUS_DIR / "alerts.yml", self.root / "alerts.yml")
        (self.root / "prometheus.yml").write_text(f"""# generated by benchmarks/dashboard.py: deploy/prometheus's jobs
global: {{scrape_interval: {SCRAPE_S}s, evaluation_interval: {SCRAPE_S}s, scrape_timeout: {SCRAPE_S}s}}
rule_files: [alerts.yml]
scrape_configs:
  - {{job_name: anysat-gateway, static_configs: [{{targets: ["127.0.0.1:{self.ports['gateway']}"]}}]}}
  - {{job_name: anysat-worker, static_configs: [{{targets: [{workers}]}}]}}
  - {{job_name: redis, static_configs: [{{targets: ["127.0.0.1:{self.ports['redis_exporter']}"]}}]}}
  - {{job_name: prometheus, static_configs: [{{targets: ["127.0.0.1:{self.ports['prometheus']}"]}}]}}
""")

    def wait_ready(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            dead = [n for n, p in self.procs.items() if p.process is not None and p.process.poll() is not None
                    and not n.startswith("worker")]
            if dead:
                raise RuntimeError(f"exited: {dead}; logs in {self.root}:\n{self.log_tail(dead[0])}")
            try:
                ready = httpx.get(f"{self.gateway_url}/readyz", timeout=2).status_code == 200
                prom = httpx.get(f"{self.prometheus_url}/-/ready", timeout=2).status_code == 200
                if ready and prom:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"stack not ready after {timeout_s} s; logs in {self.root}")
            time.sleep(0.3)

    def log_tail(self, name: str, n: int = 3000) -> str:
        return (self.root / f"{name}.log").read_bytes()[-n:].decode(errors="replace")

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.stop()
            proc.log.close()
        if self.redis is not None:
            self.redis.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def _l8_tile(out: Path) -> Path:
    spec = importlib.util.spec_from_file_location("landsat_l8_tile", REPO / "examples" / "landsat_l8_tile.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return Path(module.l8_tile(out))


def requests(work: Path) -> dict[str, dict[str, Any]]:
    """The two requests of the load, as httpx multipart arguments: the TreeSatAI tile (aerial GeoTIFF + S2/S1
    series with dates -> patch embeddings) and the Landsat 8 crop (-> land-cover mask GeoTIFF)."""
    from training.data.treesatai import read_treesatai_tile

    work.mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {"aerial": ("aerial.tif", TREESAT.with_suffix(".tif").read_bytes(), "image/tiff")}
    data: dict[str, str] = {"patch_size": "20", "crop": "center", "output": "patch", "format": "npy"}
    for name, item in read_treesatai_tile(TREESAT.with_suffix(".tif"), TREESAT.with_suffix(".h5"),
                                          ("s2", "s1-asc")).items():
        path = work / f"{name}.npy"
        np.save(path, item.data)
        files[name] = (path.name, path.read_bytes(), "application/octet-stream")
        data[f"{name}_dates"] = ",".join(item.acquired)
    l8 = _l8_tile(work / "l8.tif")
    return {"embed": {"path": "/v1/embeddings", "files": files, "data": data},
            "mask": {"path": "/v1/masks", "files": {"l8": ("l8.tif", l8.read_bytes(), "image/tiff")},
                     "data": {"l8_dates": "2020-05-18", "head": "landcover", "format": "geotiff"}}}


def drive(base_url: str, reqs: dict[str, dict[str, Any]], n: int, concurrency: int = 3,
          burst: int = 0, timeout_s: float = 300) -> dict[int, int]:
    """``n`` requests (embeddings and masks alternating) at ``concurrency``, then ``burst`` at once; returns
    the count of each status. Bounded: every request has a timeout, nothing is retried."""
    kinds = list(reqs.values())

    def one(i: int) -> int:
        r = kinds[i % len(kinds)]
        with httpx.Client(base_url=base_url, timeout=timeout_s) as client:
            return client.post(r["path"], files=r["files"], data=r["data"]).status_code

    statuses: dict[int, int] = {}
    for width, count in ((concurrency, n), (burst, burst)):
        if count <= 0:
            continue
        with ThreadPoolExecutor(width) as pool:
            for status in pool.map(one, range(count)):
                statuses[status] = statuses.get(status, 0) + 1
    return statuses


def _tools() -> tuple[Any, Any]:
    sys.path.insert(0, str(REPO / "deploy" / "prometheus"))
    sys.path.insert(0, str(REPO / "deploy" / "grafana"))
    import prove
    import render

    return prove, render


@dataclass
class Proof:
    ready_s: float = 0.0
    warmup_s: float = 0.0
    statuses: dict[int, int] = field(default_factory=dict)
    proof_rc: int = -1
    fired_s: float | None = None
    resolved_s: float | None = None


def prove_stack(stack: Stack, n: int, out: Path | None = None) -> Proof:
    """Load, dashboard proof, alert round trip (workers stopped, then started again), and the PNG if ``out``."""
    prove, render = _tools()
    result, started = Proof(), time.monotonic()
    stack.start()
    result.ready_s = time.monotonic() - started
    reqs = requests(stack.root / "inputs")
    # One of each configuration at once: each worker exports one (the first request of a configuration waits for
    # its export); the other worker then finds it in the shared cache (a hit).
    t = time.monotonic()
    result.statuses = drive(stack.gateway_url, reqs, 2, concurrency=2, timeout_s=stack.request_deadline_s + 30)
    result.warmup_s = time.monotonic() - t
    for status, count in drive(stack.gateway_url, reqs, n, burst=3 * stack.max_in_flight).items():
        result.statuses[status] = result.statuses.get(status, 0) + count
    print(f"stack ready in {result.ready_s:.1f} s, warm-up {result.warmup_s:.1f} s, load: {result.statuses}",
          flush=True)
    time.sleep(3 * SCRAPE_S)
    result.proof_rc = prove.main(["--url", stack.prometheus_url, "--rate-interval", "2m"])
    stack.stop_workers()
    client = httpx.Client(base_url=stack.prometheus_url, timeout=10)
    with client:
        result.fired_s = prove.wait_alert(client, "AnysatNoLiveWorkers", "firing", 90)
        stack.start_workers()
        result.resolved_s = prove.wait_alert(client, "AnysatNoLiveWorkers", "inactive", 90)
    print(f"AnysatNoLiveWorkers: firing {result.fired_s} s after the workers stopped, inactive {result.resolved_s} s "
          "after they started again", flush=True)
    if out is not None:
        drive(stack.gateway_url, reqs, max(6, n // 3))
        time.sleep(3 * SCRAPE_S)
        minutes = max(2, int((time.monotonic() - started) / 60) + 1)
        render.main(["--url", stack.prometheus_url, "--out", str(out), "--minutes", str(minutes)])
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "dashboard.png")
    p.add_argument("--requests", type=int, default=60)
    args = p.parse_args(argv)
    stack = Stack()
    try:
        r = prove_stack(stack, args.requests, args.out)
    finally:
        stack.stop()
    return 0 if r.proof_rc == 0 and r.fired_s is not None and r.resolved_s is not None else 1


if __name__ == "__main__":
    sys.exit(main())
