"""``anysat serve``: the gateway under uvicorn, plus (when ANYSAT_REDIS_URL is unset) a private Redis and
supervised local worker processes, so one command gives a working service.

    anysat serve                                     # $ANYSAT_CHECKPOINT, else artifacts/demo/encoder.safetensors
    anysat serve --checkpoint AnySat.pth             # the official weights
    ANYSAT_REDIS_URL=redis://10.0.0.5:6379/0 anysat serve   # gateway only; run `anysat worker`s yourself

Every flag is a field of ``GatewaySettings`` (also read from ``ANYSAT_<FIELD>``).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import uvicorn
from pydantic import ValidationError

from service.engine.cli import add_flags, explain, settings_from_args
from service.engine.redis_server import EmbeddedRedis
from service.gateway.settings import DEMO_CHECKPOINT, REPO, GatewaySettings
from service.gateway.supervisor import WorkerSupervisor

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
    p.add_argument("--log-level", default="info")
    add_flags(p, GatewaySettings)
    return p


def _supervisor(settings: GatewaySettings, metrics_dir: Path, checkpoint: Path, log_level: str) -> WorkerSupervisor:
    env = {**os.environ, "ANYSAT_CHECKPOINT": str(checkpoint), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    if (heads := settings.resolved_heads_dir()) is not None:
        env["ANYSAT_HEADS_DIR"] = str(heads)
    env["ANYSAT_EXPORT_DIR"] = str(settings.export_dir)
    assert settings.redis_url is not None
    command = [sys.executable, "-m", "service.runtime.worker", "--redis-url", settings.redis_url,
               "--queue-prefix", settings.queue_prefix, "--log-level", log_level]
    return WorkerSupervisor(command, settings.workers, env, REPO)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = settings_from_args(GatewaySettings, args)
    except ValidationError as exc:
        print(f"anysat serve: invalid settings:\n{explain(exc, GatewaySettings)}", file=sys.stderr)
        return 2
    checkpoint = settings.resolved_checkpoint()
    if not checkpoint.is_file():
        print(NO_CHECKPOINT.format(path=checkpoint, demo=DEMO_CHECKPOINT), file=sys.stderr)
        return 2
    embedded: EmbeddedRedis | None = None
    workers: WorkerSupervisor | None = None
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
            workers = _supervisor(settings, metrics_dir, checkpoint, args.log_level)
        from service.gateway.app import create_app

        app = create_app(settings)
        if workers is not None:
            gateway = app.state.gateway
            workers.restarts_counter = gateway.metrics.worker_restarts
            gateway.supervisor = workers
            workers.start()
            log.info("embedded Redis at %s, %d supervised worker(s)", settings.redis_url, settings.workers)
        log.info("serving %s on http://%s:%d (docs at /docs)", checkpoint, settings.host, settings.port)
        # uvicorn re-raises the stop signal once it has shut down; with these handlers in place (it restores
        # them first) that ends here, and the cleanup below runs instead of the default handler killing us.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda _signum, _frame: None)
        uvicorn.run(app, host=settings.host, port=settings.port, log_level=args.log_level.lower())
    finally:
        if workers is not None:
            workers.stop()
        if embedded is not None:
            embedded.stop()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
