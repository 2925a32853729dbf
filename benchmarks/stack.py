"""``anysat serve`` as a benchmark's subprocess: a free loopback port, its own session (its Redis and workers go
with it), ready when ``/readyz`` answers 200, stopped with SIGTERM (SIGKILL to the session if that hangs)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx

REPO = Path(__file__).resolve().parents[1]


class Served:
    def __init__(self, env: Mapping[str, str], flags: Sequence[str] = (), log: IO[bytes] | None = None) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # Only what the benchmark sets: ANYSAT_* left in the caller's shell would change what is measured.
        clean = {k: v for k, v in os.environ.items() if not k.startswith("ANYSAT_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.gateway.serve", "--port", str(self.port), *flags],
            cwd=REPO, env={**clean, "PYTHONPATH": str(REPO), **env}, stdout=log,
            stderr=subprocess.STDOUT if log else None, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"anysat serve exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"anysat serve not ready after {timeout_s} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


@contextmanager
def anysat_serve(env: Mapping[str, str], flags: Sequence[str] = (), log: IO[bytes] | None = None,
                 ready_timeout_s: float = 300) -> Iterator[Served]:
    """A ready ``anysat serve`` (``env``: its ``ANYSAT_*`` settings; ``flags``: more), stopped on exit."""
    served = Served(env, flags, log)
    try:
        served.wait_ready(ready_timeout_s)
        yield served
    finally:
        served.stop()
