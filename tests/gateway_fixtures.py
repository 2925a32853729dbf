"""A real gateway for tests: uvicorn on 127.0.0.1 (port chosen by the OS) in front of the session's real
Redis and real workers (threads running ``ModelRunner`` on the official-format tiny checkpoint).

``gateway_service`` is module-scoped: one server, one key prefix, one worker pool per test module.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from model import create_model
from model.heads import Head, HeadConfig, save_head
from service.engine.settings import WorkerSettings
from service.engine.worker import Worker
from service.gateway.app import create_app
from service.gateway.settings import GatewaySettings
from service.runtime.runner import ModelRunner

REPO = Path(__file__).resolve().parents[1]
LANDSAT = REPO / "examples" / "data" / "landsat8" / "LC08_224078_20200518_crop512.tif"
TREESAT = REPO / "examples" / "data" / "treesatai-ts" / "Abies_alba_1_1005_WEFL_NLF"
SEG_HEAD, CLS_HEAD = "landcover-l8", "species"


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """Run ``app`` under uvicorn on a free loopback port; yields its base URL; always stops it."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@dataclass
class WorkerPool:
    """Worker threads on one prefix; ``stop()`` is a clean exit (heartbeat deleted)."""

    redis_url: str
    prefix: str
    runner: ModelRunner
    threads: list[tuple[Worker, threading.Thread]] = field(default_factory=list)

    def start(self, n: int = 1) -> None:
        for _ in range(n):
            settings = WorkerSettings(redis_url=self.redis_url, queue_prefix=self.prefix,
                                      max_wait_ms=2, read_block_ms=100, heartbeat_interval_s=0.25,
                                      heartbeat_ttl_s=2.0)
            worker = Worker(settings, self.runner)
            thread = threading.Thread(target=worker.run, name=f"worker-{worker.consumer}", daemon=True)
            thread.start()
            self.threads.append((worker, thread))

    def stop(self) -> None:
        for worker, _ in self.threads:
            worker.stop()
        for _, thread in self.threads:
            thread.join(timeout=30)
        self.threads.clear()


@dataclass
class Service:
    url: str
    settings: GatewaySettings
    workers: WorkerPool
    app: FastAPI


def build_heads(directory: Path, embed_dim: int) -> Path:
    """Two heads in the training file format: segmentation on Landsat 8 (as l8), classification on TreeSatAI."""
    import torch

    torch.manual_seed(0)
    save_head(Head(HeadConfig("segmentation", embed_dim, ("water", "crop", "tree", "developed"), patch_size=30,
                              modalities=("l8",), output_modality="l8",
                              colours=("#0000ff", "#ffff00", "#00ff00", "#ff0000"))),
              directory / f"{SEG_HEAD}.safetensors")
    save_head(Head(HeadConfig("classification", embed_dim, ("Abies_alba", "Picea_abies", "Pinus_sylvestris"),
                              patch_size=20, modalities=("aerial", "s2", "s1-asc"))),
              directory / f"{CLS_HEAD}.safetensors")
    return directory


@pytest.fixture(scope="module")
def gateway_service(redis_url: str, reference_dir: Path, tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[Service]:
    checkpoint = reference_dir / "anysat_tiny_seed0.pth"
    heads = build_heads(tmp_path_factory.mktemp("heads"), 256)
    prefix = f"g{uuid.uuid4().hex[:8]}"
    settings = GatewaySettings(redis_url=redis_url, queue_prefix=prefix, checkpoint=checkpoint, heads_dir=heads,
                               request_deadline_s=60, max_body_bytes=8 * 2**20, max_tiles_per_request=8,
                               _env_file=None)  # type: ignore[call-arg]
    # Its own model instance: the tests' direct model calls must not share one with the worker thread.
    with running(settings, ModelRunner(create_model(checkpoint=checkpoint), heads_dir=heads)) as service:
        yield service


@contextmanager
def running(settings: GatewaySettings, runner: ModelRunner, workers: int = 1) -> Iterator[Service]:
    """A gateway on ``settings`` over HTTP, with ``workers`` worker threads running ``runner``; stops both."""
    assert settings.redis_url is not None
    pool = WorkerPool(settings.redis_url, settings.queue_prefix, runner)
    pool.start(workers)
    app = create_app(settings)
    try:
        with serving(app) as url:
            wait_ready(url, want=200 if workers else 503)  # no worker: up, but not ready
            yield Service(url, settings, pool, app)
    finally:
        pool.stop()


def wait_ready(url: str, want: int = 200, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    status = None
    while time.monotonic() < deadline:
        status = httpx.get(f"{url}/readyz", timeout=5).status_code
        if status == want:
            return
        time.sleep(0.05)
    raise AssertionError(f"/readyz stayed {status}, wanted {want}")
