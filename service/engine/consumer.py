"""The workers' side of the queue: read entries with their payloads, reclaim what dead workers held,
renew leases, answer (reply + acknowledge in one script), hand back, dead-letter."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple, cast

import numpy as np
import redis

from service.engine import payload
from service.engine.connection import connect, ensure_group, stream_id
from service.engine.errors import ErrorKind
from service.engine.payload import PayloadError, Tensors
from service.engine.settings import QueueSettings

log = logging.getLogger(__name__)

# Replies, acknowledgements and payload deletion for a batch in one atomic step, so an entry is never
# acknowledged without its reply. The first reply for a request id wins; later ones (a re-run after a
# reclaim) are dropped, so a caller can never see two different answers. Returns the stream's newest
# remaining entry id, if any: everything up to it was queued before these answers (the batcher's hint).
# KEYS: stream, then per request its done-marker, reply list and payload. ARGV: group, TTL in ms, then
# per request its entry id and reply blob.
_RESPOND = """
local n = (#KEYS - 1) / 3
local ids, payloads = {}, {}
for i = 1, n do
  if redis.call('SET', KEYS[3 * i - 1], '1', 'NX', 'PX', ARGV[2]) then
    redis.call('RPUSH', KEYS[3 * i], ARGV[2 * i + 2])
    redis.call('PEXPIRE', KEYS[3 * i], ARGV[2])
  end
  ids[i], payloads[i] = ARGV[2 * i + 1], KEYS[3 * i + 1]
end
redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
redis.call('XDEL', KEYS[1], unpack(ids))
redis.call('DEL', unpack(payloads))
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
return newest and newest[1] or false
"""

_RESPOND_SLICE = 1000  # requests per _RESPOND call

# The payloads of the entries an XREADGROUP just delivered to a consumer: sent in the same pipeline
# behind it, so Redis runs it the moment the read unblocks and a worker gets its requests' tensors
# without a second round trip. The new entries are the consumer's pending ones above the last id it
# had read (ARGV[3]); anything this misses is fetched with MGET instead.
_DELIVERED_PAYLOADS = """
local rows = redis.call('XPENDING', KEYS[1], ARGV[1], '(' .. ARGV[3], '+', ARGV[4], ARGV[2])
local out = {}
for i, row in ipairs(rows) do
  local entry = redis.call('XRANGE', KEYS[1], row[1], row[1])[1]
  local blob = false
  if entry then
    for j = 1, #entry[2], 2 do
      if entry[2][j] == 'ref' then blob = redis.call('GET', entry[2][j + 1]) end
    end
  end
  out[i] = {row[1], blob}
end
return out
"""



@dataclass(frozen=True)
class QueuedRequest:
    """One stream entry as a worker sees it, with its tensors loaded (or why they could not be)."""

    entry_id: str
    request_id: str
    batch_key: str
    payload_key: str
    deadline: float  # absolute, epoch seconds
    enqueued_at: float  # epoch seconds
    deliveries: int
    tensors: Tensors | None = None
    load_error: tuple[ErrorKind, str] | None = None

    def expired(self, now: float) -> bool:
        return now >= self.deadline


@dataclass(frozen=True)
class Ok:
    tensors: Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Err:
    kind: ErrorKind
    message: str


Reply = Ok | Err


class Responded(NamedTuple):
    sent: list[str]  # the outcome sent per request: "ok" or an ErrorKind value
    newest_id: str  # every entry up to this stream id was queued before the answers went out


class Reclaimed(NamedTuple):
    requests: list[QueuedRequest]  # claimed by the caller and worth running again
    dead_lettered: list[str]  # request ids moved to the dead-letter stream (already answered)


class Consumer:
    """What a worker does with the queue; ``consumer`` is its name in the group."""

    def __init__(self, client: redis.Redis, settings: QueueSettings | None = None, *, ensure: bool = True) -> None:
        self.redis = client
        self.settings = settings or QueueSettings()
        self._respond_script = client.register_script(_RESPOND)
        self._last_read: dict[str, str] = {}  # consumer -> highest entry id it has read
        self._fetch_warned = False
        if ensure:
            ensure_group(client, self.settings)

    def ensure_group(self) -> None:
        ensure_group(self.redis, self.settings)

    @classmethod
    def from_url(cls, url: str, settings: QueueSettings | None = None) -> Consumer:
        return cls(connect(url), settings)

    def read(self, consumer: str, count: int, block_ms: int | None) -> list[QueuedRequest]:
        """New entries for ``consumer`` (at most ``count``), waiting up to ``block_ms`` for any.

        ``block_ms`` of None or 0 does not block (Redis would read BLOCK 0 as "forever").
        """
        s = self.settings
        pipe = self.redis.pipeline(transaction=False)
        pipe.xreadgroup(s.group, consumer, {s.stream: ">"}, count=count, block=block_ms or None)
        # EVAL, not a registered Script: in a pipeline that would cost a SCRIPT EXISTS round trip.
        pipe.eval(_DELIVERED_PAYLOADS, 1, s.stream, s.group, consumer, self._last_read.get(consumer, "0-0"), count)
        resp, delivered = pipe.execute(raise_on_error=False)
        if isinstance(resp, redis.ResponseError):
            if "NOGROUP" not in str(resp):
                raise resp
            # The stream was deleted under us (FLUSHDB, manual cleanup): recreate and carry on.
            self.ensure_group()
            return []
        if isinstance(delivered, redis.ResponseError) and not self._fetch_warned:
            # XPENDING's exclusive range needs Redis >= 6.2; below that every read falls back to MGET.
            log.warning("payloads not fetched with the read (%s); using a second round trip", delivered)
            self._fetch_warned = True
        blobs = {eid: blob for eid, blob in delivered} if isinstance(delivered, list) else {}
        entries = [(eid, fields) for _stream, batch in resp or [] for eid, fields in batch]
        if entries:
            self._last_read[consumer] = entries[-1][0].decode()
        return self._load(entries, {eid: 1 for eid, _ in entries}, blobs)

    def reclaim(self, consumer: str, min_idle_ms: int, count: int = 100) -> Reclaimed:
        """Take over entries idle longer than ``min_idle_ms`` (their worker died or stalled).

        Entries now delivered more than ``max_deliveries`` times are dead-lettered and their
        callers answered with ``dead_lettered``; the rest are returned, claimed by ``consumer``.
        """
        s = self.settings
        claimed: list[tuple[bytes, dict[bytes, bytes]]] = []
        cursor: bytes | str = "0-0"
        while len(claimed) < count:
            cursor, batch = self.redis.xautoclaim(
                s.stream, s.group, consumer, min_idle_ms, start_id=cursor, count=count - len(claimed)
            )[:2]
            claimed.extend(batch)
            if cursor in (b"0-0", "0-0"):
                break
        if any(eid is None for eid, _ in claimed):
            # Redis < 7 hands back entries deleted from the stream (XDEL outside the engine)
            # without their id; they can never be answered, so acknowledge them away.
            claimed = [(eid, f) for eid, f in claimed if eid is not None]
            self._ack_orphans(consumer)
        if not claimed:
            return Reclaimed([], [])
        pipe = self.redis.pipeline(transaction=False)
        for eid, _ in claimed:
            pipe.xpending_range(s.stream, s.group, min=eid, max=eid, count=1, consumername=consumer)
        deliveries = {row[0]["message_id"]: row[0]["times_delivered"] for row in pipe.execute() if row}
        live = [(eid, f) for eid, f in claimed if deliveries.get(eid, 1) <= s.max_deliveries]
        dead = [(eid, f) for eid, f in claimed if deliveries.get(eid, 1) > s.max_deliveries]
        dead_ids = self._dead_letter(dead, deliveries, consumer) if dead else []
        return Reclaimed(self._load(live, deliveries), dead_ids)

    def renew(self, consumer: str, entry_ids: Sequence[str]) -> None:
        """Reset the idle time of entries ``consumer`` still works on, so nobody reclaims them."""
        if entry_ids:
            s = self.settings
            self.redis.xclaim(s.stream, s.group, consumer, 0, list(entry_ids), justid=True)

    def respond(self, outcomes: Sequence[tuple[QueuedRequest, Reply]]) -> Responded:
        """Write each request's reply (first reply wins), then acknowledge and delete the entries.

        Replies and acks go in one script: an entry is never acknowledged without its reply.
        Returns the outcome actually sent per request (``"ok"`` or an ``ErrorKind`` value; a
        result that cannot be encoded is turned into an ``internal_error`` reply), and the newest
        stream id queued before the answers went out (the newest answered entry if none is left).
        """
        s = self.settings
        sent: list[str] = []
        newest = max((r.entry_id for r, _ in outcomes), key=stream_id, default="0-0")
        # In slices: the script unpacks ids into one call, and Lua refuses to unpack ~8000 values.
        for start in range(0, len(outcomes), _RESPOND_SLICE):
            keys: list[str] = [s.stream]
            args: list[str | int | bytes] = [s.group, math.ceil(s.result_ttl_s * 1000)]
            for request, reply in outcomes[start : start + _RESPOND_SLICE]:
                blob, outcome = _encode_reply(request.request_id, reply)
                sent.append(outcome)
                keys += [s.done_key(request.request_id), s.reply_key(request.request_id), request.payload_key]
                args += [request.entry_id, blob]
            left = self._respond_script(keys=keys, args=args)
            if left:
                newest = max(newest, left.decode(), key=stream_id)
        return Responded(sent, newest)

    def release(self, requests: Sequence[QueuedRequest]) -> None:
        """Hand unstarted requests back to the group now (graceful shutdown), not after reclaim.

        They are re-added at the stream's tail with their original deadline and enqueue time;
        no admission check, they were admitted once already.
        """
        if not requests:
            return
        pipe = self.redis.pipeline(transaction=True)
        for r in requests:
            pipe.xadd(
                self.settings.stream,
                {
                    "id": r.request_id,
                    "key": r.batch_key,
                    "ref": r.payload_key,
                    "deadline": repr(r.deadline),
                    "enq": repr(r.enqueued_at),
                },
            )
        ids = [r.entry_id for r in requests]
        # XDEL as well as XACK: acknowledged entries would otherwise stay in the stream forever.
        pipe.xack(self.settings.stream, self.settings.group, *ids)
        pipe.xdel(self.settings.stream, *ids)
        pipe.execute()

    def prune_consumers(self, min_idle_ms: int, live: Iterable[str] = ()) -> list[str]:
        """Forget consumers with nothing pending, idle ``min_idle_ms``, and not in ``live``.

        Every worker start adds a consumer name to the group; without pruning they pile up.
        A consumer with pending entries is kept: deleting it would make those unclaimable.
        """
        s = self.settings
        keep = set(live)
        removed = []
        for c in self.redis.xinfo_consumers(s.stream, s.group):
            name = c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
            if c["pending"] == 0 and c["idle"] > min_idle_ms and name not in keep:
                self.redis.xgroup_delconsumer(s.stream, s.group, name)
                removed.append(name)
        return removed

    def remove_consumer(self, consumer: str) -> None:
        """Drop ``consumer`` from the group if it holds nothing (graceful exit)."""
        s = self.settings
        pending = self.redis.xpending_range(s.stream, s.group, "-", "+", 1, consumername=consumer)
        if not pending:
            self.redis.xgroup_delconsumer(s.stream, s.group, consumer)

    def dead_letters(self, count: int = 100) -> list[dict[str, str]]:
        """The most recent dead-letter records, newest first (for operators and tests)."""
        # connect() never decodes responses: ids, field names and values are bytes.
        rows = cast(list[tuple[bytes, dict[bytes, bytes]]],
                    self.redis.xrevrange(self.settings.dead_letter_stream, count=count))
        return [{k.decode(): v.decode() for k, v in fields.items()} for _eid, fields in rows]

    # ------------------------------------------------------------------ internals

    def _ack_orphans(self, consumer: str) -> None:
        s = self.settings
        pending = self.redis.xpending_range(s.stream, s.group, "-", "+", 1000, consumername=consumer)
        ids = [row["message_id"] for row in pending]
        pipe = self.redis.pipeline(transaction=False)
        for eid in ids:
            pipe.xrange(s.stream, min=eid, max=eid, count=1)
        orphans = [eid for eid, rows in zip(ids, pipe.execute(), strict=True) if not rows]
        if orphans:
            log.warning("acknowledging %d pending entries deleted from the stream", len(orphans))
            self.redis.xack(s.stream, s.group, *orphans)

    def _load(
        self,
        entries: Sequence[tuple[bytes, dict[bytes, bytes]]],
        deliveries: Mapping[bytes, int],
        blobs: Mapping[bytes, bytes | None] | None = None,
    ) -> list[QueuedRequest]:
        """Parse entries and attach their payloads: from ``blobs`` (entry id -> payload) where given, else MGET."""
        parsed: list[QueuedRequest] = []
        malformed: list[bytes] = []
        for eid, fields in entries:
            try:
                parsed.append(
                    QueuedRequest(
                        entry_id=eid.decode(),
                        request_id=fields[b"id"].decode(),
                        batch_key=fields[b"key"].decode(),
                        payload_key=fields[b"ref"].decode(),
                        deadline=float(fields[b"deadline"]),
                        enqueued_at=float(fields[b"enq"]),
                        deliveries=int(deliveries.get(eid, 1)),
                    )
                )
            except (KeyError, ValueError, TypeError, AttributeError):
                malformed.append(eid)
        if malformed:
            # Not written by enqueue(); nobody could be answered, so just drop them.
            log.warning("dropping %d malformed stream entries: %s", len(malformed), malformed)
            s = self.settings
            pipe = self.redis.pipeline(transaction=True)
            pipe.xack(s.stream, s.group, *malformed)
            pipe.xdel(s.stream, *malformed)
            pipe.execute()
        if not parsed:
            return []
        blobs = dict(blobs or {})
        missing = [r for r in parsed if r.entry_id.encode() not in blobs]
        if missing:
            fetched = cast(list[bytes | None], self.redis.mget([r.payload_key for r in missing]))
            blobs.update((r.entry_id.encode(), blob) for r, blob in zip(missing, fetched, strict=True))
        return [_with_tensors(r, blobs[r.entry_id.encode()]) for r in parsed]

    def _dead_letter(
        self,
        entries: Sequence[tuple[bytes, dict[bytes, bytes]]],
        deliveries: Mapping[bytes, int],
        consumer: str,
    ) -> list[str]:
        s = self.settings
        requests = self._load(entries, deliveries)
        pipe = self.redis.pipeline(transaction=True)
        outcomes: list[tuple[QueuedRequest, Reply]] = []
        for r in requests:
            reason = (
                f"delivered {r.deliveries} times (limit {s.max_deliveries}); each worker that "
                "took it died or stalled before answering"
            )
            pipe.xadd(
                s.dead_letter_stream,
                {
                    "id": r.request_id,
                    "key": r.batch_key,
                    "deliveries": str(r.deliveries),
                    "reason": reason,
                    "deadline": repr(r.deadline),
                    "enq": repr(r.enqueued_at),
                    "at": repr(time.time()),
                    "by": consumer,
                },
                maxlen=s.dead_letter_maxlen,
                approximate=True,
            )
            outcomes.append((r, Err(ErrorKind.DEAD_LETTERED, reason)))
        pipe.execute()
        self.respond(outcomes)
        log.warning("dead-lettered %d requests: %s", len(requests), [r.request_id for r in requests])
        return [r.request_id for r in requests]


def _with_tensors(request: QueuedRequest, blob: bytes | None) -> QueuedRequest:
    if blob is None:
        err = (ErrorKind.PAYLOAD_MISSING, "request tensors expired before a worker read them")
        return replace(request, load_error=err)
    try:
        tensors, _meta = payload.decode(blob)
    except PayloadError as exc:
        return replace(request, load_error=(ErrorKind.BAD_REQUEST, str(exc)))
    return replace(request, tensors=tensors)


def _encode_reply(request_id: str, reply: Reply) -> tuple[bytes, str]:
    if isinstance(reply, Ok):
        try:
            return payload.encode(reply.tensors, {"status": "ok"}), "ok"
        except (PayloadError, TypeError, AttributeError) as exc:
            log.error("result of request %s cannot be encoded: %s", request_id, exc)
            reply = Err(ErrorKind.INTERNAL, f"the model's result could not be encoded: {exc}")
    meta = {"status": "error", "kind": reply.kind.value, "message": reply.message}
    return payload.encode({}, meta), reply.kind.value
