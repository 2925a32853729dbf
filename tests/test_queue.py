"""The queue on a real redis-server: payload format, round trip, idempotent replies, typed errors,
admission control, reclaim and dead-lettering, hand-back. The test itself plays the worker here;
the worker loop has its own tests in test_worker.py.
"""

from __future__ import annotations

import json
import struct
import threading
import time

import numpy as np
import pytest
import redis
import safetensors.numpy

from service.engine import payload
from service.engine.connection import connect, stream_id
from service.engine.consumer import Err, Ok, QueuedRequest
from service.engine.errors import (
    BadRequest,
    DeadLettered,
    DuplicateRequest,
    ErrorKind,
    Overloaded,
    RequestTimedOut,
    ResultTimeout,
)
from service.engine.queue import RedisQueue
from service.engine.settings import QueueSettings


def make_queue(client: redis.Redis, prefix: str, **overrides: object) -> RedisQueue:
    return RedisQueue(client, QueueSettings(prefix=prefix, **overrides))  # type: ignore[arg-type]


def tile(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "s1-asc": rng.normal(size=(3, 2, 4, 4)).astype(np.float32),
        "s1-asc_dates": np.array([10, 40, 70], dtype=np.int64),
        "mask": np.array([True, False, True]),
    }


def test_payload_round_trip_keeps_names_dtypes_and_metadata() -> None:
    tensors = tile(0)
    tensors["transposed"] = np.arange(6, dtype=np.float64).reshape(2, 3).T  # not C-contiguous
    tensors["scalar"] = np.array(7, dtype=np.int64)  # 0-d must stay 0-d
    blob = payload.encode(tensors, {"status": "ok", "n": 3})
    out, meta = payload.decode(blob)
    assert meta == {"status": "ok", "n": 3}
    assert out.keys() == tensors.keys()
    for name, array in tensors.items():
        assert (out[name].dtype, out[name].shape) == (array.dtype, array.shape)
        np.testing.assert_array_equal(out[name], array)


def test_payload_rejects_bytes_it_did_not_write() -> None:
    with pytest.raises(payload.PayloadError):
        payload.decode(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(payload.PayloadError):
        payload.decode(b"\x01")


def test_payload_is_a_safetensors_file_both_ways() -> None:
    # Our writer and reader against the safetensors library, so the format stays the published one.
    tensors = {
        "u8": np.arange(7, dtype=np.uint8),  # odd sizes, so alignment depends on the writer's ordering
        "f16": np.linspace(0, 1, 3, dtype=np.float16),
        "i64": np.array([1, -2, 3], dtype=np.int64),
        "f32": np.ones((2, 3), dtype=np.float32),
        "big_endian": np.arange(4, dtype=">u2"),
        "flags": np.array([True, False]),
        "empty": np.zeros((0, 3), dtype=np.float32),
    }
    blob = payload.encode(tensors, {"k": 1})
    theirs = safetensors.numpy.load(blob)
    assert theirs.keys() == tensors.keys()
    for name, array in tensors.items():
        np.testing.assert_array_equal(theirs[name], array)
    out, meta = payload.decode(safetensors.numpy.save(tensors, metadata={"anysat": '{"k": 1}'}))
    assert meta == {"k": 1}
    for name, array in tensors.items():
        np.testing.assert_array_equal(out[name], array)
        assert out[name].dtype == array.dtype.newbyteorder("<") and out[name].shape == array.shape


def test_payload_decode_gives_aligned_read_only_views_of_the_blob() -> None:
    blob = payload.encode({"a": np.arange(5, dtype=np.uint8), "b": np.arange(3, dtype=np.float64)})
    out, _ = payload.decode(blob)
    for array in out.values():
        assert array.base is not None and not array.flags.writeable and array.flags.aligned
    with pytest.raises(ValueError, match="read-only"):
        out["b"][0] = 1.0


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ({"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}, "does not fit"),  # 3 floats' bytes for 4
        ({"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}, "does not fit"),  # past the end
        ({"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}, "malformed"),  # no such dtype
        ({"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}, "malformed"),
        ({"dtype": "F32", "shape": [-2], "data_offsets": [0, 0]}, "does not fit"),
    ],
)
def test_payload_decode_names_the_tensor_that_does_not_fit(entry: dict, match: str) -> None:
    header = json.dumps({"x": entry}).encode()
    blob = struct.pack("<Q", len(header)) + header + bytes(8)
    with pytest.raises(payload.PayloadError, match=match) as err:
        payload.decode(blob)
    assert "'x'" in str(err.value)
    with pytest.raises(payload.PayloadError, match="header says"):
        payload.decode(struct.pack("<Q", 1 << 40) + b"{}")


def test_payload_refuses_to_encode_dtypes_safetensors_cannot_name() -> None:
    with pytest.raises(payload.PayloadError, match="complex"):
        payload.encode({"z": np.ones(2, dtype=np.complex64)})


def test_engine_client_sends_and_reads_every_argument_kind(redis_url: str, key_prefix: str) -> None:
    client = connect(redis_url)
    big = np.random.default_rng(0).bytes(3 * 2**20)  # larger than one socket read and the send cutoff
    for value, expected in ((big, big), (memoryview(big), big), ("é", "é".encode()), (7, b"7"), (0.5, b"0.5")):
        client.set(f"{key_prefix}:arg", value)
        assert client.get(f"{key_prefix}:arg") == expected
    with pytest.raises(redis.DataError, match="bool"):
        client.set(f"{key_prefix}:arg", True)
    assert type(client.connection_pool.get_connection()._parser).__name__ == "_HiredisParser"  # the dependency
    client.close()


def test_round_trip_and_nothing_left_behind(redis_client: redis.Redis, key_prefix: str) -> None:
    q = make_queue(redis_client, key_prefix)
    rid = q.enqueue("s1-asc:4x4", tile(1), deadline_s=5)
    [req] = q.read("w1", count=10, block_ms=100)
    assert (req.request_id, req.batch_key, req.deliveries) == (rid, "s1-asc:4x4", 1)
    assert req.enqueued_at < req.deadline <= time.time() + 5
    assert req.tensors is not None
    np.testing.assert_array_equal(req.tensors["s1-asc"], tile(1)["s1-asc"])

    assert q.respond([(req, Ok({"y": req.tensors["s1-asc"] * 2}))]) == (["ok"], req.entry_id)
    out = q.wait_result(rid, timeout_s=1)
    np.testing.assert_allclose(out["y"], tile(1)["s1-asc"] * 2)
    # Acknowledged entries are deleted, payload gone, reply list consumed: only the done-marker
    # (with a TTL) remains besides the stream itself.
    assert q.depth() == 0
    assert redis_client.xpending(q.settings.stream, q.settings.group)["pending"] == 0
    left = {k.decode() for k in redis_client.scan_iter(match=f"{key_prefix}:*")}
    assert left == {q.settings.stream, q.settings.done_key(rid)}
    assert 0 < redis_client.pttl(q.settings.done_key(rid)) <= q.settings.result_ttl_s * 1000


def _calls(client: redis.Redis) -> dict[str, int]:
    return {name: stats["calls"] for name, stats in client.info("commandstats").items()}


def test_worker_round_trips(redis_client: redis.Redis, key_prefix: str) -> None:
    # The payload comes back in the read's own round trip (a script pipelined behind XREADGROUP), and the
    # reply is one script call: no MGET, no MULTI, no SCRIPT EXISTS that a pipelined registered script costs.
    q = make_queue(redis_client, key_prefix)
    for _ in range(2):  # measure the second round: the first use of a script on a server may load it
        rids = [q.enqueue("k", tile(i), deadline_s=5) for i in range(3)]
        before = _calls(redis_client)
        reqs = q.read("w1", count=10, block_ms=100)
        q.respond([(r, Ok({"y": r.tensors["s1-asc"][0]})) for r in reqs])  # type: ignore[index]
        after = _calls(redis_client)
    called = {name: after[name] - before.get(name, 0) for name in after if after[name] != before.get(name, 0)}
    assert called["cmdstat_xreadgroup"] == 1 and called["cmdstat_eval"] == 1 and called["cmdstat_evalsha"] == 1
    assert not {"cmdstat_mget", "cmdstat_multi", "cmdstat_script"} & called.keys(), called
    for i, rid in enumerate(rids):
        np.testing.assert_array_equal(q.wait_result(rid, 1)["y"], tile(i)["s1-asc"][0])


def test_respond_answers_more_requests_than_lua_can_unpack_at_once(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    # A worker may answer thousands at once (expired entries of a large prefetch); Lua's unpack stops near 8000.
    q = make_queue(redis_client, key_prefix)
    requests = [QueuedRequest(f"1-{i}", f"r{i}", "k", f"{key_prefix}:payload:r{i}", 0.0, 0.0, 1) for i in range(8500)]
    sent, newest = q.respond([(r, Err(ErrorKind.TIMED_OUT, "late")) for r in requests])
    assert sent == ["timed_out"] * 8500 and newest == "1-8499"
    assert all(redis_client.exists(*[q.settings.reply_key(r.request_id) for r in requests[i : i + 500]]) == 500
               for i in range(0, 8500, 500))
    with pytest.raises(RequestTimedOut):
        q.wait_result("r8499", 1)


def test_respond_reports_the_newest_entry_queued_before_the_answer(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    # The batcher's hint: what a worker reads later with an id up to this was queued while the batch ran.
    q = make_queue(redis_client, key_prefix)
    q.enqueue("k", tile(1), deadline_s=5)
    [first] = q.read("w1", count=1, block_ms=100)
    q.enqueue("k", tile(2), deadline_s=5)  # queued while the first "runs"
    queued_meanwhile = redis_client.xrevrange(q.settings.stream, count=1)[0][0].decode()
    assert q.respond([(first, Ok({}))]).newest_id == queued_meanwhile != first.entry_id
    [second] = q.read("w1", count=1, block_ms=100)
    assert second.entry_id == queued_meanwhile
    assert q.respond([(second, Ok({}))]).newest_id == second.entry_id  # nothing left: its own id
    assert stream_id("1700000000000-12") == (1700000000000, 12) > stream_id("1700000000000-9")


def test_read_falls_back_to_mget_for_payloads_the_pipelined_script_missed(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    q = make_queue(redis_client, key_prefix)
    rid = q.enqueue("k", tile(3), deadline_s=5)
    q._last_read["w1"] = "99999999999999-0"  # the script then looks above every id and finds nothing
    before = _calls(redis_client).get("cmdstat_mget", 0)
    [req] = q.read("w1", count=10, block_ms=100)
    assert _calls(redis_client)["cmdstat_mget"] == before + 1
    assert req.request_id == rid and req.tensors is not None
    np.testing.assert_array_equal(req.tensors["s1-asc"], tile(3)["s1-asc"])


def test_read_survives_the_payload_script_failing(
    redis_client: redis.Redis, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    # As on a Redis older than 6.2, which has no exclusive XPENDING ranges: the script errors, MGET steps in.
    q = make_queue(redis_client, key_prefix)
    rid = q.enqueue("k", tile(4), deadline_s=5)
    q._last_read["w1"] = "not-an-id"
    with caplog.at_level("WARNING", logger="service.engine.queue"):
        [req] = q.read("w1", count=10, block_ms=100)
    assert req.request_id == rid and req.tensors is not None
    np.testing.assert_array_equal(req.tensors["s1-asc"], tile(4)["s1-asc"])
    assert "second round trip" in caplog.text


def test_first_reply_wins_and_is_delivered_once(redis_client: redis.Redis, key_prefix: str) -> None:
    q = make_queue(redis_client, key_prefix)
    rid = q.enqueue("k", {"x": np.ones(2)}, deadline_s=5)
    [req] = q.read("w1", 10, 100)
    q.respond([(req, Ok({"y": np.array([1.0])}))])
    # A re-run after a reclaim answers again, differently: it must not reach the caller.
    q.respond([(req, Ok({"y": np.array([2.0])}))])
    q.respond([(req, Err(ErrorKind.BAD_REQUEST, "late"))])
    np.testing.assert_array_equal(q.wait_result(rid, 1)["y"], [1.0])
    assert redis_client.llen(q.settings.reply_key(rid)) == 0
    with pytest.raises(ResultTimeout):
        q.wait_result(rid, 0.05)


def test_error_replies_raise_typed_exceptions(redis_client: redis.Redis, key_prefix: str) -> None:
    q = make_queue(redis_client, key_prefix)
    a = q.enqueue("k", {"x": np.ones(1)}, deadline_s=5)
    b = q.enqueue("k", {"x": np.ones(1)}, deadline_s=5)
    ra, rb = q.read("w1", 10, 100)
    q.respond(
        [
            (ra, Err(ErrorKind.BAD_REQUEST, "ValueError: bands missing")),
            (rb, Err(ErrorKind.TIMED_OUT, "late")),
        ]
    )
    with pytest.raises(BadRequest, match="bands missing") as bad:
        q.wait_result(a, 1)
    assert bad.value.kind is ErrorKind.BAD_REQUEST and bad.value.request_id == a
    with pytest.raises(RequestTimedOut):
        q.wait_result(b, 1)


def test_wait_result_times_out_when_nobody_answers(redis_client: redis.Redis, key_prefix: str) -> None:
    q = make_queue(redis_client, key_prefix)
    rid = q.enqueue("k", {"x": np.ones(1)}, deadline_s=5)
    started = time.monotonic()
    with pytest.raises(ResultTimeout):
        q.wait_result(rid, 0.2)
    assert 0.15 < time.monotonic() - started < 2


def test_overload_refuses_above_depth_until_work_is_answered(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    q = make_queue(redis_client, key_prefix, max_queue_depth=3, overload_retry_after_s=2.5)
    for _ in range(3):
        q.enqueue("k", {"x": np.ones(1)}, deadline_s=5)
    with pytest.raises(Overloaded) as exc:
        q.enqueue("k", {"x": np.ones(1)}, deadline_s=5)
    assert (exc.value.depth, exc.value.max_depth, exc.value.retry_after_s) == (3, 3, 2.5)
    # Delivered but unanswered entries still count: the limit is on work not yet done.
    first = q.read("w1", 1, 100)
    with pytest.raises(Overloaded):
        q.enqueue("k", {"x": np.ones(1)}, deadline_s=5)
    q.respond([(first[0], Ok({}))])
    q.enqueue("k", {"x": np.ones(1)}, deadline_s=5)
    # The refused requests left nothing behind.
    assert len(list(redis_client.scan_iter(match=f"{key_prefix}:payload:*"))) == 3


def test_duplicate_request_id_is_refused(redis_client: redis.Redis, key_prefix: str) -> None:
    q = make_queue(redis_client, key_prefix)
    q.enqueue("k", {"x": np.ones(1)}, request_id="abc", deadline_s=5)
    with pytest.raises(DuplicateRequest):
        q.enqueue("k", {"x": np.zeros(1)}, request_id="abc", deadline_s=5)
    assert q.depth() == 1


def test_reclaim_counts_deliveries_then_dead_letters(redis_client: redis.Redis, key_prefix: str) -> None:
    q = make_queue(redis_client, key_prefix, max_deliveries=2)
    rid = q.enqueue("k", {"x": np.ones(1)}, deadline_s=5)
    assert len(q.read("dies-first", 10, 100)) == 1
    assert q.reclaim("w2", min_idle_ms=10_000) == ([], [])  # not idle long enough yet
    time.sleep(0.02)
    again = q.reclaim("w2", min_idle_ms=10)
    assert [(r.request_id, r.deliveries) for r in again.requests] == [(rid, 2)]
    assert again.requests[0].tensors is not None
    time.sleep(0.02)
    final = q.reclaim("w3", min_idle_ms=10)
    assert final == ([], [rid])
    with pytest.raises(DeadLettered, match="delivered 3 times"):
        q.wait_result(rid, 1)
    [record] = q.dead_letters()
    assert (record["id"], record["key"], record["deliveries"], record["by"]) == (rid, "k", "3", "w3")
    assert q.depth() == 0
    assert not list(redis_client.scan_iter(match=f"{key_prefix}:payload:*"))


def test_expired_payload_is_reported_not_run(redis_client: redis.Redis, key_prefix: str) -> None:
    q = make_queue(redis_client, key_prefix)
    rid = q.enqueue("k", {"x": np.ones(1)}, deadline_s=5)
    redis_client.delete(q.settings.payload_key(rid))  # as if its TTL had run out
    [req] = q.read("w1", 10, 100)
    assert req.tensors is None and req.load_error is not None
    assert req.load_error[0] is ErrorKind.PAYLOAD_MISSING


def test_release_hands_entries_back_immediately(redis_client: redis.Redis, key_prefix: str) -> None:
    q = make_queue(redis_client, key_prefix)
    ids = [q.enqueue("k", {"x": np.full(1, i)}, deadline_s=5) for i in range(3)]
    held = q.read("leaving", 10, 100)
    q.release(held)
    assert redis_client.xpending(q.settings.stream, q.settings.group)["pending"] == 0
    again = q.read("other", 10, 100)
    assert [r.request_id for r in again] == ids
    assert [r.deadline for r in again] == [r.deadline for r in held]
    assert all(r.tensors is not None for r in again)
    q.remove_consumer("leaving")
    names = {c["name"] for c in redis_client.xinfo_consumers(q.settings.stream, q.settings.group)}
    assert names == {b"other"}


def test_wait_longer_than_the_client_socket_timeout(redis_url: str, key_prefix: str) -> None:
    # redis-py clients default to a 5 s socket timeout; a caller may wait far longer than that.
    q = RedisQueue(redis.Redis.from_url(redis_url, socket_timeout=0.3), QueueSettings(prefix=key_prefix))
    rid = q.enqueue("k", {"x": np.ones(1)}, deadline_s=5)
    [req] = q.read("w1", 1, 100)
    answer = threading.Timer(0.8, lambda: q.respond([(req, Ok({"y": np.ones(1)}))]))
    answer.start()
    try:
        assert "y" in q.wait_result(rid, timeout_s=3)
    finally:
        answer.join()


def test_entries_deleted_behind_the_queue_are_acknowledged_away(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    q = make_queue(redis_client, key_prefix)
    q.enqueue("k", {"x": np.ones(1)}, deadline_s=5)
    keep = q.enqueue("k", {"x": np.ones(1)}, deadline_s=5)
    gone, kept = q.read("w1", 10, 100)
    redis_client.xdel(q.settings.stream, gone.entry_id)  # someone cleaned up by hand
    time.sleep(0.01)
    again = q.reclaim("w2", min_idle_ms=1)
    assert [r.request_id for r in again.requests] == [keep] and again.dead_lettered == []
    q.respond([(kept, Ok({}))])
    assert redis_client.xpending(q.settings.stream, q.settings.group)["pending"] == 0
