"""`anysat serve` end to end: one command, a private Redis, one worker process, a working service; SIGTERM
stops all of it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from gateway_fixtures import REPO
from test_gateway_errors import body


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_runs_gateway_redis_and_worker(reference_dir: Path) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANYSAT_")}
    env["ANYSAT_CHECKPOINT"] = str(reference_dir / "anysat_tiny_seed0.pth")
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from service.serve import main; "
                             f"sys.exit(main(['--port', '{port}', '--log-level', 'warning']))"],
                            cwd=REPO, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status = httpx.get(f"{url}/readyz", timeout=2).status_code
            except httpx.TransportError:
                status = None
            if status == 200:
                break
            time.sleep(0.2)
        assert status == 200, f"not ready (exit {proc.poll()})"
        r = httpx.post(f"{url}/v1/embeddings", json=body(), timeout=60)
        assert r.status_code == 200, r.text
        assert "anysat_requests_total" in httpx.get(f"{url}/metrics", timeout=10).text  # the worker's, summed
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=45) == 0
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_serve_without_checkpoint_says_how(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANYSAT_")}
    r = subprocess.run([sys.executable, "-c", "import sys; from service.serve import main; "
                        f"sys.exit(main(['--checkpoint', '{tmp_path / 'none.pth'}']))"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--checkpoint AnySat.pth" in r.stderr
