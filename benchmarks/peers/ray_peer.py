"""The Ray Serve peer: the graphs in a Serve deployment batching with ``@serve.batch``, as its docs show.

    python -m benchmarks.peers.ray_peer --spec spec.json --port 8124 --max-batch-size 8 --batch-timeout 0.005

Settings (the rest Ray's defaults): a local Ray started by ``ray.init(num_cpus=<cores>, include_dashboard=False)``
(the dashboard is no part of a request's path; left out to spare the shared machine); one replica
(``num_replicas=1``, ``ray_actor_options={"num_cpus": <cores>}`` so Ray leaves ORT's threads alone);
``max_ongoing_requests=64`` (the default, 5, would cap a batch below ``max_batch_size``: Serve's batching guide
says to raise it); ``@serve.batch(max_batch_size, batch_wait_timeout_s)``. The HTTP proxy on 127.0.0.1:<port>,
route ``/predict``. ``__call__`` reads the JSON body and decodes the base64 .npy; the batch method splits the batch
by configuration, one session each, and answers base64 .npy.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from benchmarks.peers.common import PeerModel, decode_request, peer_args, to_b64_npy


def build_app(spec: str, max_batch_size: int, batch_timeout_s: float, cpus: int) -> Any:
    from ray import serve
    from starlette.requests import Request

    @serve.deployment(num_replicas=1, max_ongoing_requests=64, ray_actor_options={"num_cpus": cpus})
    class AnySat:
        def __init__(self) -> None:
            self.model = PeerModel(spec)

        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_timeout_s)
        async def predict(self, items: list[Any]) -> list[dict[str, Any]]:
            return [{"embedding": to_b64_npy(e), "batch": n} for e, n in self.model.run_mixed(items)]

        async def __call__(self, request: Request) -> dict[str, Any]:
            return await self.predict(decode_request(await request.json()))

    return AnySat.bind()


def main(argv: list[str] | None = None) -> int:
    args = peer_args("benchmarks.peers.ray_peer", argv)
    import ray
    from ray import serve

    cpus = os.cpu_count() or 1
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    serve.run(build_app(args.spec, args.max_batch_size, args.batch_timeout, cpus), route_prefix="/predict")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()
    ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
