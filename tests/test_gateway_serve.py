"""`anysat serve` end to end: one command, a private Redis, one worker process, a working service; SIGTERM
stops all of it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from gateway_fixtures import REPO
from test_gateway_errors import body

from service.client import AnySatClient
from service.gateway.settings import DEMO_CHECKPOINT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(env: dict[str, str]) -> Iterator[str]:
    """``anysat serve`` in a subprocess with ``env``; yields its URL once ready; SIGTERM must stop it cleanly."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from service.gateway.serve import main; "
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
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=45) == 0
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ANYSAT_")}


@pytest.mark.slow
def test_serve_runs_gateway_redis_and_worker(reference_dir: Path) -> None:
    env = {**_clean_env(), "ANYSAT_CHECKPOINT": str(reference_dir / "anysat_tiny_seed0.pth")}
    with serving(env) as url:
        r = httpx.post(f"{url}/v1/embeddings", json=body(), timeout=60)
        assert r.status_code == 200, r.text
        assert "anysat_requests_total" in httpx.get(f"{url}/metrics", timeout=10).text  # the worker's, summed
        assert httpx.get(f"{url}/v1/models", timeout=10).json()["heads"] == []  # no demo heads for another encoder


def test_serve_defaults_serve_the_demo_encoder_and_its_head() -> None:
    """The README's main command: no settings at all gives the demo encoder *and* its land-cover head."""
    with serving(_clean_env()) as url, AnySatClient(url) as client:
        models = client.models()
        assert models["checkpoint"]["path"] == str(DEMO_CHECKPOINT)
        (head,) = [h for h in models["heads"] if h["name"] == "landcover"]
        assert "error" not in head and head["classes"] == ["water", "crop", "tree", "developed"]
        rng = np.random.default_rng(0)
        l8 = rng.uniform(0.0, 0.3, (1, 11, 12, 12)).astype(np.float32)  # 120 m of l8 at 10 m, one date
        (mask,) = client.mask({"l8": l8}, head="landcover", dates={"l8": [139]}, normalize="none")
        assert mask.arrays["class_map"].shape == (12, 12) and mask.arrays["class_map"].max() < 4


def test_serve_without_checkpoint_says_how(tmp_path: Path) -> None:
    env = _clean_env()
    r = subprocess.run([sys.executable, "-c", "import sys; from service.gateway.serve import main; "
                        f"sys.exit(main(['--checkpoint', '{tmp_path / 'none.pth'}']))"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--checkpoint AnySat.pth" in r.stderr
