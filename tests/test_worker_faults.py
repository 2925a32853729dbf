"""Whose fault: a request that fails alone on its input is ``bad_request`` (422 at the gateway); one the runner
fails on for any other reason (a RuntimeError standing in for a bug or out of memory) is ``internal_error``
(500), counted in the outcome metric and logged with its traceback. Real worker thread, real Redis, the test
runner of ``runners.py`` (``poison`` raises ValueError, ``fault`` RuntimeError)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import redis
from runners import DoublingRunner

from service.engine.errors import BadRequest, InternalError
from service.engine.queue import RedisQueue
from service.engine.settings import QueueSettings, WorkerSettings
from service.engine.worker import Worker

FAST = {"heartbeat_interval_s": 0.1, "heartbeat_ttl_s": 1.0, "reclaim_idle_ms": 400, "reclaim_interval_ms": 100,
        "read_block_ms": 50}


def x_of(i: int) -> dict[str, np.ndarray]:
    return {"x": np.full((2, 3), float(i), dtype=np.float32)}


@pytest.fixture
def worker(redis_url: str, key_prefix: str) -> Iterator[Callable[..., tuple[Worker, DoublingRunner]]]:
    running: list[tuple[Worker, threading.Thread]] = []

    def start(**overrides: object) -> tuple[Worker, DoublingRunner]:
        runner = DoublingRunner()
        settings = WorkerSettings(redis_url=redis_url, queue_prefix=key_prefix,
                                  **{**FAST, **overrides})  # type: ignore[arg-type]
        w = Worker(settings, runner)
        thread = threading.Thread(target=w.run, daemon=True)
        thread.start()
        running.append((w, thread))
        return w, runner

    yield start
    for w, thread in running:
        w.stop()
        thread.join(timeout=10)
        assert not thread.is_alive(), "worker thread did not stop"


def test_runner_fault_is_internal_error_counted_and_logged_and_bad_input_stays_bad_request(
    worker: Callable[..., tuple[Worker, DoublingRunner]], redis_client: redis.Redis, key_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    q = RedisQueue(redis_client, QueueSettings(prefix=key_prefix))
    good = [q.enqueue("k", x_of(i), deadline_s=10) for i in range(4)]
    fault = q.enqueue("k", {**x_of(98), "fault": np.ones(1)}, deadline_s=10)
    poison = q.enqueue("k", {**x_of(99), "poison": np.ones(1)}, deadline_s=10)
    with caplog.at_level(logging.INFO, logger="service.engine.worker"):
        w, runner = worker(max_batch_size=16, max_wait_ms=50)
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
