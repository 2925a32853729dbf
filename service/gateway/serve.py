"""``anysat serve``: the gateway under uvicorn, plus (when ANYSAT_REDIS_URL is unset) a private Redis and
local worker processes, so one command gives a working service.

    anysat serve                                     # $ANYSAT_CHECKPOINT, else artifacts/demo/encoder.safetensors
    anysat serve --checkpoint AnySat.pth             # the official weights
    ANYSAT_REDIS_URL=redis://10.0.0.5:6379/0 anysat serve   # gateway only; run `anysat worker`s yourself
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import uvicorn

from service.engine.redis_server import EmbeddedRedis, _die_with_parent
from service.gateway.settings import DEMO_CHECKPOINT, GatewaySettings

log = logging.getLogger("anysat.serve")

NO_CHECKPOINT = (
    "anysat serve: no checkpoint at {path}.\n"
    "  Official weights: download AnySat.pth (https://huggingface.co/g-astruc/AnySat) and run\n"
    "    anysat serve --checkpoint AnySat.pth      (or ANYSAT_CHECKPOINT=AnySat.pth anysat serve)\n"
    "  The demo encoder ({demo}) appears once training has written it."
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="anysat serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="encoder checkpoint (default: $ANYSAT_CHECKPOINT, else the demo encoder)")
    p.add_argument("--heads-dir", help="directory of <name>.safetensors heads (default: $ANYSAT_HEADS_DIR)")
    p.add_argument("--host", help="bind address (default: $ANYSAT_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: $ANYSAT_PORT or 8000)")
    p.add_argument("--workers", type=int, help="local worker processes with the embedded Redis (default 1)")
    p.add_argument("--log-level", default="info")
    return p


def _start_workers(n: int, redis_url: str, settings: GatewaySettings, metrics_dir: Path,
                   checkpoint: Path) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, "ANYSAT_CHECKPOINT": str(checkpoint), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    if (heads := settings.resolved_heads_dir()) is not None:
        env["ANYSAT_HEADS_DIR"] = str(heads)
    command = [sys.executable, "-m", "service.engine.worker", "--redis-url", redis_url,
               "--runner", "service.runtime.runner:runner_from_env", "--prefix", settings.queue_prefix]
    repo = Path(__file__).resolve().parents[2]
    # The workers die with this process (PDEATHSIG) even if it is SIGKILLed.
    return [subprocess.Popen(command, env=env, cwd=repo, preexec_fn=_die_with_parent) for _ in range(n)]


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for p in processes:
        if p.poll() is None:
            p.terminate()  # SIGTERM: the worker finishes its batch and hands the rest back
    for p in processes:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides: dict[str, Any] = {k: v for k, v in {
        "checkpoint": args.checkpoint, "heads_dir": args.heads_dir, "host": args.host, "port": args.port,
        "workers": args.workers}.items() if v is not None}
    settings = GatewaySettings(**overrides)
    checkpoint = settings.resolved_checkpoint()
    if not checkpoint.is_file():
        print(NO_CHECKPOINT.format(path=checkpoint, demo=DEMO_CHECKPOINT), file=sys.stderr)
        return 2
    embedded: EmbeddedRedis | None = None
    workers: list[subprocess.Popen[bytes]] = []
    metrics_dir: Path | None = None
    try:
        if settings.redis_url is None:
            embedded = EmbeddedRedis()
            metrics_dir = Path(tempfile.mkdtemp(prefix="anysat-metrics-"))
            url = embedded.start()
            # Pin what was resolved: with the checkpoint now explicit, resolved_heads_dir() would no
            # longer fall back to the demo heads that go with the demo encoder.
            settings = settings.model_copy(update={"redis_url": url, "worker_metrics_dir": metrics_dir,
                                                   "checkpoint": checkpoint,
                                                   "heads_dir": settings.resolved_heads_dir()})
            workers = _start_workers(settings.workers, url, settings, metrics_dir, checkpoint)
            log.info("embedded Redis at %s, %d worker(s)", url, len(workers))
        log.info("serving %s on http://%s:%d (docs at /docs)", checkpoint, settings.host, settings.port)
        from service.gateway.app import create_app

        # uvicorn re-raises the stop signal once it has shut down; with these handlers in place (it restores
        # them first) that ends here, and the cleanup below runs instead of the default handler killing us.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda _signum, _frame: None)
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                    log_level=args.log_level.lower())
    finally:
        _stop(workers)
        if embedded is not None:
            embedded.stop()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
