"""The systems under test, each a server process tree on a loopback port and a way to call it: anysat-serve
(``anysat serve``: gateway + Redis + worker, called through ``AnySatClient``), LitServe and Ray Serve (a subprocess
each, called with the JSON a user of theirs would post)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, ClassVar

import httpx
import numpy as np

from benchmarks.peers.common import encode_request, from_b64_npy
from benchmarks.proc import status_mb
from benchmarks.soak import _descendants
from benchmarks.stack import REPO, Served
from service.client import AnySatClient

PEER_PACKAGES = {"litserve": "litserve", "ray-serve": "ray.serve"}


def missing_package(name: str) -> str | None:
    """Why system ``name`` cannot run here (its package is not installed), or None."""
    module = PEER_PACKAGES.get(name)
    if module is None:
        return None
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    return None if found else f"{module} is not installed (pip install -e '.[bench]')"


def tree_memory_mb(root: int) -> tuple[float, float, list[tuple[str, float, float]]]:
    """(sum of RSS, sum of PSS, [(command, RSS, PSS)] per process) over ``root`` and its descendants. RSS counts
    shared pages once per process (a forked tree looks bigger than it is); PSS splits them between the sharers."""
    rows = []
    for pid in _descendants(root):
        try:
            rss = status_mb("VmRSS", pid)
            pss = next(int(line.split()[1]) / 1024 for line in
                       Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines() if line.startswith("Pss:"))
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, StopIteration):
            continue
        rows.append((cmd[:160], rss, pss))
    return sum(r[1] for r in rows), sum(r[2] for r in rows), rows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class System:
    """A server to start, call from many threads, measure and stop."""

    name = ""
    settings: ClassVar[dict[str, Any]] = {}

    def start(self) -> None:
        """Start the server, not waiting for it."""

    def wait_ready(self, request: Mapping[str, np.ndarray], timeout_s: float = 300) -> None:
        """Return once the server answers (``request``: one to try)."""

    def stop(self) -> None: ...

    def pause(self) -> None:
        """Freeze the server's processes while another system is measured (peers burn CPU when idle)."""

    def resume(self) -> None: ...

    @property
    def pid(self) -> int:
        raise NotImplementedError

    def cpu_seconds(self) -> float:
        """CPU time (user + system) its process tree has used so far."""
        total = 0
        for pid in _descendants(self.pid):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def call(self, config: int, request: Mapping[str, np.ndarray]) -> tuple[np.ndarray, int | None]:
        """One request, answered: its embedding, and the size of the forward it ran in when the answer says so."""
        raise NotImplementedError

    def batch_stats(self) -> tuple[float, float] | None:
        """(requests, forwards) run so far, when the server counts them itself."""
        return None


class Ours(System):
    name = "anysat-serve"

    def __init__(self, checkpoint: Path, export_dir: Path, configs: list[Any], batch: int, wait_ms: float,
                 log: IO[bytes]) -> None:
        self.configs = configs
        self.env = {"ANYSAT_CHECKPOINT": str(checkpoint), "ANYSAT_EXPORT_DIR": str(export_dir),
                    "ANYSAT_RUNTIME": "onnx", "ANYSAT_MAX_BATCH_SIZE": str(batch), "ANYSAT_MAX_WAIT_MS": str(wait_ms),
                    "ANYSAT_MAX_IN_FLIGHT": "64", "ANYSAT_WORKERS": "1"}
        self.settings = {"max_batch_size": batch, "max_wait_ms": wait_ms, "adaptive_wait": "on (default)",
                         "workers": 1, "runtime": "onnx", "max_in_flight": 64,
                         "encoding": "AnySatClient.embed: JSON, arrays base64, normalize=auto"}
        self.log = log
        self._local = threading.local()

    def start(self) -> None:
        self.served = Served(self.env, log=self.log)

    def wait_ready(self, request: Mapping[str, np.ndarray], timeout_s: float = 300) -> None:
        self.served.wait_ready(timeout_s)

    def stop(self) -> None:
        self.served.stop()

    @property
    def pid(self) -> int:
        return self.served.pid

    def call(self, config: int, request: Mapping[str, np.ndarray]) -> tuple[np.ndarray, int | None]:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = AnySatClient(self.served.url, timeout_s=120, retries=0)
        cfg = self.configs[config]
        tile = {n: request[n] for n in cfg.names}
        dates = {n: request[f"{n}_dates"].tolist() for n in cfg.names if f"{n}_dates" in request}
        result = client.embed(tile, dates=dates, patch_size=cfg.patch_size, normalize="auto")
        return result[0].arrays["embedding"], None

    def batch_stats(self) -> tuple[float, float] | None:
        """From the workers' ``anysat_batch_size`` histogram, as the gateway's /metrics shows it."""
        text = httpx.get(f"{self.served.url}/metrics", timeout=10).text
        total = count = 0.0
        for line in text.splitlines():
            if line.startswith("anysat_batch_size_sum"):
                total += float(line.split()[-1])
            elif line.startswith("anysat_batch_size_count"):
                count += float(line.split()[-1])
        return total, count


class Peer(System):
    """A peer's server as a subprocess of its own session (``python -m benchmarks.peers.<module>``)."""

    module = ""

    def __init__(self, spec: Path, batch: int, wait_ms: float, log: IO[bytes]) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/predict"
        self.cmd = [sys.executable, "-m", f"benchmarks.peers.{self.module}", "--spec", str(spec), "--port",
                    str(self.port), "--max-batch-size", str(batch), "--batch-timeout", str(wait_ms / 1000)]
        self.log = log
        self._local = threading.local()

    def start(self) -> None:
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("ANYSAT_", "RAY_"))}
        self.proc = subprocess.Popen(self.cmd, cwd=REPO, env={**clean, "PYTHONPATH": str(REPO)}, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, request: Mapping[str, np.ndarray], timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
            try:
                self.call(0, request)
                return
            except (httpx.TransportError, httpx.HTTPStatusError):
                time.sleep(0.5)
        raise RuntimeError(f"{self.name} not ready after {timeout_s} s")

    def _signal(self, sig: int) -> None:
        for pid in _descendants(self.proc.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def stop(self) -> None:
        self.resume()
        tree = _descendants(self.proc.pid)  # Ray's workers start sessions of their own: kill by id, not group
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)
        for pid in tree:  # whatever it left behind (a peer that hung in shutdown)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def call(self, config: int, request: Mapping[str, np.ndarray]) -> tuple[np.ndarray, int | None]:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = httpx.Client(timeout=120)
        arrays = {k: v for k, v in request.items() if not k.endswith("_stats")}  # statistics: the server's own
        r = client.post(self.url, json=encode_request(config, arrays))
        r.raise_for_status()
        body = r.json()
        return from_b64_npy(body["embedding"]), int(body["batch"])


class LitServePeer(Peer):
    name, module = "litserve", "litserve_peer"
    settings: ClassVar[dict[str, Any]] = {
        "LitAPI": "max_batch_size, batch_timeout", "LitServer": "accelerator=cpu, workers_per_device=1",
                "run": "num_api_servers=None (one per worker), generate_client_file=False",
                "encoding": "JSON, arrays base64 .npy"}


class RayPeer(Peer):
    name, module = "ray-serve", "ray_peer"
    settings: ClassVar[dict[str, Any]] = {"ray.init": "num_cpus=<cores>, include_dashboard=False", "deployment":
                "num_replicas=1, max_ongoing_requests=64, num_cpus=<cores>",
                "serve.batch": "max_batch_size, batch_wait_timeout_s", "encoding": "JSON, arrays base64 .npy"}
