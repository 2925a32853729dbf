"""The engine's Redis client and what both sides of the queue share: the consumer group and stream ids.

Layout of the keys (``p`` = ``QueueSettings.prefix``):

- ``p:requests``          stream; an entry is ``id, key, ref, deadline, enq`` and nothing heavy
- ``p:payload:<id>``      the request tensors (``service.engine.payload`` bytes), TTL deadline + margin
- ``p:reply:<id>``        list the caller BLPOPs; receives exactly one push, TTL ``result_ttl_s``
- ``p:done:<id>``         idempotency marker set NX with the reply, TTL ``result_ttl_s``
- ``p:dead-letter``       stream of entries delivered more than ``max_deliveries`` times

An entry is acknowledged *and deleted* in the same script that writes its reply, so the stream
only ever holds undelivered + in-flight entries: its length is the admission depth, and it
returns to zero when the load stops. ``service.engine.producer`` is the callers' side (the gateway),
``service.engine.consumer`` the workers'.
"""

from __future__ import annotations

import redis
from redis.connection import Encoder, PythonRespSerializer

from service.engine.settings import QueueSettings

# Payloads are megabytes (a TreeSatAI tile is 1.4 MB), and redis-py's defaults move them slowly. Measured
# on 1.5 MB: a GET takes 6-8 ms with the pure-Python reply parser (0.4 ms on a raw socket) and ~0.8 ms with
# hiredis, reading 1 MB per recv; but hiredis also packs commands, copying the argument, and a SET then
# takes ~6 ms instead of ~0.8 ms with the Python packer, which sends large arguments as they are. So: the
# hiredis parser (a dependency) with the Python packer.
SOCKET_READ_SIZE = 1 << 20


def connect(url: str, **kwargs: object) -> redis.Redis:
    """A client for the engine's keys: ``redis.Redis.from_url`` set up for megabyte payloads."""
    encoder = Encoder(encoding="utf-8", encoding_errors="strict", decode_responses=False)  # redis-py's defaults
    # 6000: redis-py's own cutoff above which an argument is sent as it is, not joined into a buffer
    packer = PythonRespSerializer(6000, encoder.encode)
    return redis.Redis.from_url(url, socket_read_size=SOCKET_READ_SIZE, command_packer=packer,
                                **kwargs)


def ensure_group(client: redis.Redis, settings: QueueSettings) -> None:
    """Create the stream and its one consumer group if missing."""
    # Created at id 0 so entries added before the first worker started are still delivered.
    try:
        client.xgroup_create(settings.stream, settings.group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def stream_id(entry_id: str) -> tuple[int, int]:
    """A Redis stream entry id ``"<ms>-<seq>"`` as a comparable pair."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
