"""The LitServe peer: the graphs behind ``litserve.LitServer`` with its dynamic batching, as its docs show.

    python -m benchmarks.peers.litserve_peer --spec spec.json --port 8123 --max-batch-size 8 --batch-timeout 0.005

Settings (the rest LitServe's defaults): ``LitAPI(max_batch_size, batch_timeout)``; ``LitServer(accelerator="cpu",
workers_per_device=1, timeout=60)``; ``run(num_api_servers=None`` (one HTTP server process per inference worker,
its recommended default), ``generate_client_file=False)``. ``decode_request`` turns the JSON body's base64 .npy
into arrays; ``batch`` keeps the list (LitServe's default would stack equal arrays; ours differ in date count);
``predict`` splits the batch by configuration, one session each; ``encode_response`` answers base64 .npy.
"""

from __future__ import annotations

from typing import Any

import litserve as ls

from benchmarks.peers.common import PeerModel, decode_request, peer_args, to_b64_npy


class AnySatAPI(ls.LitAPI):
    def __init__(self, spec: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec_path = spec  # not `spec`: LitAPI keeps its LitSpec there

    def setup(self, device: str) -> None:
        self.model = PeerModel(self.spec_path)

    # No annotation on ``request``: LitServe reads the endpoint's body type from it (none: the parsed JSON).
    def decode_request(self, request, **kwargs):  # type: ignore[no-untyped-def]
        return decode_request(request)

    def batch(self, inputs: list[Any]) -> list[Any]:
        return inputs

    def predict(self, x: list[Any], **kwargs: Any) -> list[Any]:
        return self.model.run_mixed(x)

    def unbatch(self, output: list[Any]) -> list[Any]:
        return output

    def encode_response(self, output: Any, **kwargs: Any) -> dict[str, Any]:
        embedding, batch = output
        return {"embedding": to_b64_npy(embedding), "batch": batch}


def main(argv: list[str] | None = None) -> int:
    args = peer_args("benchmarks.peers.litserve_peer", argv)
    api = AnySatAPI(args.spec, max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=60)
    server.run(host="127.0.0.1", port=args.port, generate_client_file=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
