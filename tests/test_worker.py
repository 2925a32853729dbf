"""The worker loop on a real redis-server, in threads and as real processes (killed for real).

The runner is ``runners.DoublingRunner``: a small numpy computation (``y = 2x``) that stands in
for the model, which is tested elsewhere; it reports the batch each request ran in, so batch
composition can be checked from the results alone.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from runners import DoublingRunner

from service.engine.batching import Batcher
from service.engine.consumer import QueuedRequest
from service.engine.errors import (
    BadRequest,
    DeadLettered,
    InternalError,
    ModelUnavailable,
    RequestFailed,
    RequestTimedOut,
)
from service.engine.heartbeat import live_workers
from service.engine.metrics import WorkerMetrics, multiprocess_registry
from service.engine.queue import RedisQueue
from service.engine.settings import QueueSettings, WorkerSettings
from service.engine.worker import Worker, main

REPO = Path(__file__).resolve().parents[1]
# Short timings so recovery paths run in well under a second.
FAST = {
    "heartbeat_interval_s": 0.1,
    "heartbeat_ttl_s": 1.0,
    "reclaim_idle_ms": 400,
    "reclaim_interval_ms": 100,
    "read_block_ms": 50,
}


def x_of(i: int) -> dict[str, np.ndarray]:
    return {"x": np.full((2, 3), float(i), dtype=np.float32)}


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.01)


def collect(
    q: RedisQueue, ids: list[str], timeout_s: float = 10
) -> dict[str, dict[str, np.ndarray] | RequestFailed]:
    out: dict[str, dict[str, np.ndarray] | RequestFailed] = {}
    for rid in ids:
        try:
            out[rid] = q.wait_result(rid, timeout_s)
        except RequestFailed as exc:
            out[rid] = exc
    return out


# ---------------------------------------------------------------------- batching rules (no Redis)


def fake(i: int, key: str) -> QueuedRequest:
    return QueuedRequest(f"{i}-0", f"r{i}", key, f"p{i}", deadline=1e12, enqueued_at=0.0, deliveries=1)


def test_batch_cut_at_size_before_wait() -> None:
    b = Batcher(max_batch_size=3, max_wait_ms=100)
    b.add([fake(i, "a") for i in range(4)], now=0.0)
    assert b.time_until_due(0.0) == 0.0
    key, batch = b.pop_due(0.0)  # type: ignore[misc]
    assert key == "a" and [r.request_id for r in batch] == ["r0", "r1", "r2"]
    assert b.pop_due(0.05) is None  # one left, not full, not waited long enough
    assert b.time_until_due(0.05) == pytest.approx(0.05)
    assert [r.request_id for r in b.pop_due(0.1)[1]] == ["r3"]  # type: ignore[index]
    assert len(b) == 0 and b.time_until_due(1.0) is None


def test_oldest_key_first_and_keys_never_mix() -> None:
    b = Batcher(max_batch_size=2, max_wait_ms=10)
    b.add([fake(0, "quiet")], now=0.0)
    b.add([fake(i, "busy") for i in range(1, 7)], now=0.005)
    order = []
    while (cut := b.pop_due(0.02)) is not None:
        key, batch = cut
        assert {r.batch_key for r in batch} == {key}
        order.append((key, len(batch)))
    # The quiet key's lone request is older than every busy one: it is not starved.
    assert order == [("quiet", 1), ("busy", 2), ("busy", 2), ("busy", 2)]


def test_adaptive_wait_waits_only_for_company_that_can_come() -> None:
    b = Batcher(max_batch_size=4, max_wait_ms=10)
    b.add([fake(0, "k")], now=0.0)  # first request of a key: no reason to expect company
    assert b.time_until_due(0.0) == 0.0
    assert b.pop_due(0.0) is not None
    # One caller sending each request once the previous is answered, 2 ms apart: gaps far below
    # max_wait_ms, yet no arrival meets an unanswered request, so waiting could only add latency.
    t = 0.0
    for i in range(1, 8):
        b.answered("k", f"{i - 1}-0")  # nothing else was queued when the previous answer went out
        t += 0.002
        b.add([fake(i, "k")], now=t)
        assert b.pop_due(t) is not None, f"request {i} waited for company that cannot come"
    assert b.expected_gap("k") == pytest.approx(0.002)
    # Traffic faster than the worker: 8 is cut at once, 9-11 are queued while it runs, and the answer goes
    # out with 11 the stream's newest entry. Each of them met unanswered requests: company is coming.
    b.add([fake(8, "k")], now=t)
    assert b.pop_due(t) is not None
    b.answered("k", "11-0")
    b.add([fake(i, "k") for i in (9, 10, 11)], now=t + 0.004)
    assert b.pop_due(t + 0.004) is None  # 3 < 4: the partial batch waits
    assert b.time_until_due(t + 0.004) == pytest.approx(0.010)
    assert b.pop_due(t + 0.0139) is None and len(b.pop_due(t + 0.0141)[1]) == 3  # type: ignore[index]
    # The traffic stops; a request after a long pause pulls the gap past max_wait: cut at once.
    b.add([fake(99, "k")], now=1.0)
    assert b.expected_gap("k") > 0.010
    assert b.pop_due(1.0) is not None


def test_adaptive_wait_off_always_waits_for_max_wait() -> None:
    b = Batcher(max_batch_size=4, max_wait_ms=10, adaptive_wait=False)
    b.add([fake(0, "k")], now=0.0)
    assert b.pop_due(0.0) is None and b.time_until_due(0.0) == pytest.approx(0.010)
    assert b.pop_due(0.010) is not None


# ---------------------------------------------------------------------- in-process workers


@pytest.fixture
def start_worker(redis_url: str, key_prefix: str) -> Iterator[Callable[..., tuple[Worker, DoublingRunner]]]:
    running: list[tuple[Worker, threading.Thread]] = []

    def start(runner: DoublingRunner | None = None, **overrides: object) -> tuple[Worker, DoublingRunner]:
        runner = runner or DoublingRunner()
        options = {**FAST, **overrides}
        options.setdefault("queue_prefix", key_prefix)
        settings = WorkerSettings(redis_url=redis_url, **options)  # type: ignore[arg-type]
        worker = Worker(settings, runner)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        running.append((worker, thread))
        return worker, runner

    yield start
    for worker, thread in running:
        worker.stop()
        thread.join(timeout=10)
        assert not thread.is_alive(), "worker thread did not stop"


def test_mixed_keys_interleaved_never_share_a_batch(
    start_worker: Callable[..., tuple[Worker, DoublingRunner]], redis_client: redis.Redis, key_prefix: str
) -> None:
    q = RedisQueue(redis_client, QueueSettings(prefix=key_prefix))
    keys = ["s2:6x6", "s1-asc:4x4", "aerial:300"]
    sent = {q.enqueue(keys[i % 3], x_of(i), deadline_s=10): (i, keys[i % 3]) for i in range(90)}
    worker, runner = start_worker(max_batch_size=8, max_wait_ms=20)
    results = collect(q, list(sent))
    batches: dict[int, set[str]] = {}
    for rid, (i, key) in sent.items():
        out = results[rid]
        assert isinstance(out, dict), out
        np.testing.assert_array_equal(out["y"], x_of(i)["x"] * 2)
        assert int(out["key_crc"]) == zlib.crc32(key.encode())  # the runner was told this key
        batches.setdefault(int(out["batch_id"]), set()).add(key)
    assert all(len(members) == 1 for members in batches.values())
    assert max(size for _, size in runner.calls) == 8  # real batching happened
    assert len(batches) == len(runner.calls) < 90
    assert [w.consumer for w in live_workers(redis_client, key_prefix)] == [worker.consumer]


def test_a_caller_waiting_for_each_answer_pays_no_batching_wait(
    start_worker: Callable[..., tuple[Worker, DoublingRunner]], redis_client: redis.Redis, key_prefix: str
) -> None:
    # A fast model and one caller sending back to back: arrivals come milliseconds apart, well inside
    # max_wait_ms, but never while an earlier request is unanswered. Waiting for company would cost every
    # request the full 1.5 s here; requests queued together still share a batch.
    q = RedisQueue(redis_client, QueueSettings(prefix=key_prefix))
    _, runner = start_worker(max_batch_size=4, max_wait_ms=1500)
    for i in range(12):
        started = time.monotonic()
        np.testing.assert_array_equal(q.wait_result(q.enqueue("k", x_of(i), deadline_s=30), 30)["y"], x_of(i)["x"] * 2)
        assert time.monotonic() - started < 0.75, f"request {i} waited for company"
    assert [size for _, size in runner.calls] == [1] * 12
    # Requests queued while a batch runs are read together and leave in full batches.
    runner.sleep_s = 0.3
    slow = q.enqueue("k", x_of(12), deadline_s=30)
    deadline = time.monotonic() + 10
    while len(runner.calls) < 13 and time.monotonic() < deadline:
        time.sleep(0.005)
    burst = [q.enqueue("k", x_of(i), deadline_s=30) for i in range(8)]
    assert all(isinstance(out, dict) for out in collect(q, [slow, *burst]).values())
    assert [size for _, size in runner.calls[12:]] == [1, 4, 4]


def test_bad_request_fails_alone_and_worker_survives(
    start_worker: Callable[..., tuple[Worker, DoublingRunner]], redis_client: redis.Redis, key_prefix: str
) -> None:
    q = RedisQueue(redis_client, QueueSettings(prefix=key_prefix))
    ids = [q.enqueue("k", x_of(i), deadline_s=10) for i in range(8)]
    poison = q.enqueue("k", {**x_of(99), "poison": np.ones(1)}, deadline_s=10)
    _, runner = start_worker(max_batch_size=16, max_wait_ms=50)
    with pytest.raises(BadRequest, match="ValueError: poison pill") as exc:
        q.wait_result(poison, 10)
    assert exc.value.request_id == poison
    for i, rid in enumerate(ids):
        np.testing.assert_array_equal(q.wait_result(rid, 10)["y"], x_of(i)["x"] * 2)
    assert runner.calls[0] == ("k", 9)  # the whole batch failed once, then each ran alone
    after = q.enqueue("k", x_of(5), deadline_s=10)
    assert "y" in q.wait_result(after, 10)


def test_unavailable_graph_fails_the_batch_at_once_and_worker_survives(
    start_worker: Callable[..., tuple[Worker, DoublingRunner]], redis_client: redis.Redis, key_prefix: str
) -> None:
    """No request is at fault when a configuration's graph cannot be built: one call, one answer for all,
    instead of a rerun per request (each of which would try the export again)."""
    q = RedisQueue(redis_client, QueueSettings(prefix=key_prefix))
    ids = [q.enqueue("k", {**x_of(i), "unavailable": np.ones(1)}, deadline_s=10) for i in range(3)]
    worker, runner = start_worker(max_batch_size=16, max_wait_ms=50)
    for rid in ids:
        with pytest.raises(ModelUnavailable, match="export failed"):
            q.wait_result(rid, 10)
    assert runner.calls == [("k", 3)]
    after = q.enqueue("k", x_of(5), deadline_s=10)
    assert "y" in q.wait_result(after, 10)
    assert worker.metrics.requests.labels(outcome="model_unavailable")._value.get() == 3


def test_expired_requests_are_answered_timed_out_not_run(
    start_worker: Callable[..., tuple[Worker, DoublingRunner]], redis_client: redis.Redis, key_prefix: str
) -> None:
    q = RedisQueue(redis_client, QueueSettings(prefix=key_prefix))
    stale = [q.enqueue("k", x_of(i), deadline_s=0.05) for i in range(3)]
    time.sleep(0.1)  # their deadline passes while no worker is up
    fresh = q.enqueue("k", x_of(7), deadline_s=10)
    _, runner = start_worker()
    for rid in stale:
        with pytest.raises(RequestTimedOut, match="deadline passed"):
            q.wait_result(rid, 5)
    np.testing.assert_array_equal(q.wait_result(fresh, 5)["y"], x_of(7)["x"] * 2)
    assert runner.calls == [("k", 1)]  # only the fresh one ever reached the model


def test_thousands_of_requests_leave_nothing_behind(
    start_worker: Callable[..., tuple[Worker, DoublingRunner]], redis_client: redis.Redis, key_prefix: str
) -> None:
    # result_ttl_s bounds how long an unread reply (and its done-marker) may live. Long enough that no reply
    # expires before this one-at-a-time client reads it, however busy the machine (3 s once did, in CI): what
    # must hold is that every key left behind carries that TTL, which Redis then enforces.
    settings = QueueSettings(prefix=key_prefix, result_ttl_s=60)
    q = RedisQueue(redis_client, settings)
    start_worker(queue_prefix=key_prefix, result_ttl_s=60, max_batch_size=64, max_wait_ms=2)
    for round_ in range(5):  # steady load: 5 rounds of 600 in flight
        ids = [q.enqueue(f"k{i % 2}", x_of(i), deadline_s=30) for i in range(600)]
        results = collect(q, ids)
        assert all(isinstance(r, dict) for r in results.values()), round_
        assert q.depth() == 0
    assert redis_client.xinfo_groups(settings.stream)[0]["pending"] == 0
    assert redis_client.memory_usage(settings.stream) < 8_000  # bytes: no trail of deleted entries

    def leftovers() -> set[bytes]:
        return {
            k for k in redis_client.scan_iter(match=f"{key_prefix}:*", count=1000) if b":worker:" not in k
        }

    # Payloads and reply lists are gone already; only done-markers remain, each expiring within result_ttl_s.
    markers = leftovers() - {settings.stream.encode()}
    assert len(markers) == 3000 and all(b":done:" in k for k in markers)
    pipe = redis_client.pipeline(transaction=False)
    for k in markers:
        pipe.pttl(k)
    ttls = pipe.execute()
    assert all(0 < t <= 60_000 for t in ttls), sorted(ttls)[:5]  # pttl -1 would be a leak


def test_runner_fault_is_internal_error_counted_and_logged_and_bad_input_stays_bad_request(
    start_worker: Callable[..., tuple[Worker, DoublingRunner]], redis_client: redis.Redis, key_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Whose fault: a request that fails alone on its input (``poison``: ValueError) is ``bad_request`` (422 at the
    gateway); one the runner fails on for any other reason (``fault``: a RuntimeError standing in for a bug or out
    of memory) is ``internal_error`` (500), counted in the outcome metric and logged with its traceback."""
    q = RedisQueue(redis_client, QueueSettings(prefix=key_prefix))
    good = [q.enqueue("k", x_of(i), deadline_s=10) for i in range(4)]
    fault = q.enqueue("k", {**x_of(98), "fault": np.ones(1)}, deadline_s=10)
    poison = q.enqueue("k", {**x_of(99), "poison": np.ones(1)}, deadline_s=10)
    with caplog.at_level(logging.INFO, logger="service.engine.worker"):
        w, runner = start_worker(max_batch_size=16, max_wait_ms=50)
        with pytest.raises(InternalError) as internal:
            q.wait_result(fault, 10)
        with pytest.raises(BadRequest, match="ValueError: poison pill"):
            q.wait_result(poison, 10)
        for i, rid in enumerate(good):  # the batch failed once, then each ran alone: the innocent get results
            np.testing.assert_array_equal(q.wait_result(rid, 10)["y"], x_of(i)["x"] * 2)
    assert runner.calls[0] == ("k", 6) and [n for _, n in runner.calls[1:]] == [1] * 6
    # The reply names the failure's type, not its message (server details stay in the log).
    assert internal.value.kind.value == "internal_error" and "RuntimeError" in internal.value.message
    assert "/srv/secret" not in internal.value.message and fault in internal.value.message
    logged = [r for r in caplog.records if r.levelno == logging.ERROR and fault in r.getMessage()]
    assert logged and logged[0].exc_info is not None and "secret" in str(logged[0].exc_info[1])
    assert w.metrics.requests.labels(outcome="internal_error")._value.get() == 1
    assert w.metrics.requests.labels(outcome="bad_request")._value.get() == 1
    assert w.metrics.requests.labels(outcome="ok")._value.get() == 4
    after = q.enqueue("k", x_of(5), deadline_s=10)  # the worker lives on
    assert "y" in q.wait_result(after, 10)


# ---------------------------------------------------------------------- worker processes


@pytest.fixture
def spawn(
    redis_url: str, key_prefix: str, tmp_path: Path
) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(consumer: str, *flags: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        fast = [f"--{k.replace('_', '-')}={v}" for k, v in FAST.items()]
        cmd = [sys.executable, "-m", "service.engine.worker", "--redis-url", redis_url,
               "--runner", "runners:make_runner", "--queue-prefix", key_prefix, "--consumer", consumer,
               *fast, *flags]  # fmt: skip
        full_env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", **(env or {})}
        log = (tmp_path / f"{consumer}.log").open("wb")
        proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def wait_live(client: redis.Redis, prefix: str, consumers: set[str]) -> None:
    wait_until(
        lambda: consumers <= {w.consumer for w in live_workers(client, prefix)},
        timeout_s=20,
        what=f"workers {sorted(consumers)} to beat",
    )


def pending_of(client: redis.Redis, q: RedisQueue, consumer: str) -> int:
    rows = client.xpending_range(q.settings.stream, q.settings.group, "-", "+", 1000, consumername=consumer)
    return len(rows)


def test_two_worker_processes_share_one_queue_and_their_metrics_add_up(
    spawn: Callable[..., subprocess.Popen[bytes]], redis_client: redis.Redis, key_prefix: str, tmp_path: Path
) -> None:
    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "ANYSAT_TEST_SLEEP_S": "0.01"}
    spawn("a", "--max-batch-size=8", env=env)
    spawn("b", "--max-batch-size=8", env=env)
    wait_live(redis_client, key_prefix, {"a", "b"})
    q = RedisQueue(redis_client, QueueSettings(prefix=key_prefix))
    ids = [q.enqueue("k", x_of(i), deadline_s=30) for i in range(200)]
    results = collect(q, ids)
    pids = set()
    for i, rid in enumerate(ids):
        out = results[rid]
        assert isinstance(out, dict)
        np.testing.assert_array_equal(out["y"], x_of(i)["x"] * 2)
        pids.add(int(out["pid"]))
    assert len(pids) == 2  # both processes took work from the one group
    batches = len({int(r["batch_id"]) for r in results.values() if isinstance(r, dict)})

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in multiprocess_registry(str(metrics_dir)).collect()
        for s in family.samples
    }
    assert samples[("anysat_requests_total", (("outcome", "ok"),))] == 200
    assert samples[("anysat_batch_size_count", ())] == batches
    assert samples[("anysat_batch_size_sum", ())] == 200
    assert samples[("anysat_queue_wait_seconds_count", ())] == 200


def test_sigkill_mid_batch_every_request_answered_exactly_once(
    spawn: Callable[..., subprocess.Popen[bytes]], redis_client: redis.Redis, key_prefix: str
) -> None:
    env = {"ANYSAT_TEST_SLEEP_S": "0.03"}
    victim = spawn("victim", "--max-batch-size=8", env=env)
    spawn("survivor", "--max-batch-size=8", env=env)
    wait_live(redis_client, key_prefix, {"victim", "survivor"})
    q = RedisQueue(redis_client, QueueSettings(prefix=key_prefix))
    ids = [q.enqueue("k", x_of(i), deadline_s=60) for i in range(200)]
    first = collect(q, ids[:16])
    assert pending_of(redis_client, q, "victim") > 0  # it holds work: batch in flight + prefetch
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=5)
    results = {**first, **collect(q, ids[16:], timeout_s=20)}
    survivor_pid = None
    for i, rid in enumerate(ids):
        out = results[rid]
        assert isinstance(out, dict), f"request {i}: {out}"
        np.testing.assert_array_equal(out["y"], x_of(i)["x"] * 2)
        if i >= 16 and int(out["pid"]) != victim.pid:
            survivor_pid = int(out["pid"])
    assert survivor_pid is not None
    # Exactly once: no second reply is waiting in any reply list, and the queue is empty.
    assert all(redis_client.llen(q.settings.reply_key(rid)) == 0 for rid in ids)
    assert q.depth() == 0 and pending_of(redis_client, q, "victim") == 0
    wait_until(
        lambda: "victim" not in {w.consumer for w in live_workers(redis_client, key_prefix)},
        timeout_s=3,
        what="the dead worker's heartbeat to expire",
    )
    group = q.settings.stream, q.settings.group
    wait_until(
        lambda: b"victim" not in {c["name"] for c in redis_client.xinfo_consumers(*group)},
        timeout_s=3,
        what="the dead consumer to be pruned from the group",
    )


def test_request_that_kills_workers_is_dead_lettered_while_others_succeed(
    spawn: Callable[..., subprocess.Popen[bytes]], redis_client: redis.Redis, key_prefix: str
) -> None:
    names = {"w1", "w2", "w3"}
    procs = [spawn(n, "--max-batch-size=4", "--max-wait-ms=20", "--max-deliveries=2") for n in sorted(names)]
    wait_live(redis_client, key_prefix, names)
    q = RedisQueue(redis_client, QueueSettings(prefix=key_prefix, max_deliveries=2))
    ids = [q.enqueue("k", x_of(i), deadline_s=60) for i in range(6)]
    crash = q.enqueue("k", {**x_of(0), "crash": np.ones(1)}, deadline_s=60)
    ids += [q.enqueue("k", x_of(i), deadline_s=60) for i in range(6, 12)]
    with pytest.raises(DeadLettered, match="delivered 3 times"):
        q.wait_result(crash, 20)
    results = collect(q, ids, timeout_s=20)
    for i, rid in enumerate(ids):
        out = results[rid]
        assert isinstance(out, dict), f"request {i}: {out}"
        np.testing.assert_array_equal(out["y"], x_of(i)["x"] * 2)
    assert sum(p.poll() is not None for p in procs) == 2  # it took down two workers, not three
    assert [d["id"] for d in q.dead_letters()] == [crash]


def test_sigterm_finishes_batch_in_flight_and_hands_back_the_rest(
    spawn: Callable[..., subprocess.Popen[bytes]], redis_client: redis.Redis, key_prefix: str, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    q = RedisQueue(redis_client, QueueSettings(prefix=key_prefix))
    ids = [q.enqueue("k", x_of(i), deadline_s=60) for i in range(12)]
    # Queued before the worker starts, so its first read takes all 12: one batch of 4 runs,
    # 8 wait in its hands. A reclaim threshold far beyond the test: whatever another worker
    # gets afterwards, it gets because it was handed back, not reclaimed.
    flags = ["--reclaim-idle-ms=60000", "--max-batch-size=4", "--prefetch=12"]
    first = spawn("first", *flags, env={"ANYSAT_TEST_SLEEP_S": "0.5", "ANYSAT_TEST_MARK_DIR": str(marks)})
    wait_until(lambda: any(marks.iterdir()), timeout_s=20, what="the first batch to start")
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=10) == 0
    assert [m.name.rsplit("-", 1)[1] for m in marks.iterdir()] == ["4"]  # one batch, not two
    done = collect(q, ids[:4], timeout_s=1)
    assert all(isinstance(r, dict) and int(r["batch_size"]) == 4 for r in done.values())
    assert q.depth() == 8
    assert redis_client.xpending(q.settings.stream, q.settings.group)["pending"] == 0  # not held
    assert "first" not in {w.consumer for w in live_workers(redis_client, key_prefix)}

    spawn("second", *flags)
    rest = collect(q, ids[4:], timeout_s=10)
    for i, rid in enumerate(ids[4:], start=4):
        out = rest[rid]
        assert isinstance(out, dict), out
        np.testing.assert_array_equal(out["y"], x_of(i)["x"] * 2)


def test_main_refuses_to_start_without_redis(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("ANYSAT_REDIS_URL", raising=False)
    assert main(["--runner", "runners:make_runner"]) == 2
    assert "ANYSAT_REDIS_URL" in capsys.readouterr().err


def test_main_rejects_inconsistent_timing(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--redis-url", redis_url, "--runner", "runners:make_runner", "--reclaim-idle-ms=100"]
    assert main(argv) == 2
    assert "reclaim_idle_ms" in capsys.readouterr().err


def test_metric_text_names() -> None:
    m = WorkerMetrics()
    m.count_outcomes(["ok", "timed_out"])
    names = {f.name for f in text_string_to_metric_families(generate_latest(m.registry).decode())}
    assert {"anysat_batch_size", "anysat_queue_wait_seconds", "anysat_inference_seconds", "anysat_requests",
            "anysat_export_cache_hits", "anysat_export_cache_misses", "anysat_reclaimed",
            "anysat_dead_lettered"} <= names  # fmt: skip


def test_cli_flags_come_from_the_settings_models() -> None:
    import argparse

    from service.engine.cli import add_flags, settings_from_args

    parser = argparse.ArgumentParser()
    add_flags(parser, WorkerSettings)
    args = parser.parse_args(["--redis-url", "redis://x", "--max-wait-ms", "2.5", "--no-adaptive-wait"])
    s = settings_from_args(WorkerSettings, args)
    assert (s.max_wait_ms, s.adaptive_wait) == (2.5, False)
    assert settings_from_args(WorkerSettings, parser.parse_args(["--redis-url", "redis://x"])).adaptive_wait is True
