"""The worker loop: read from the queue, batch per key, run, reply, acknowledge. Plus ``main``.

One worker is one process with one consumer name in the shared group; N of them on one Redis
need no other coordination. Its guarantees:

- A batch holds one batch key; it is cut by ``Batcher`` (size or wait, oldest key first).
- If the runner raises on a batch, each request is rerun alone; only those that still fail get an error:
  ``bad_request`` for input errors (``ValueError``), ``internal_error`` for anything else (logged with its
  traceback). Nothing a request contains can end the loop. A runner that cannot build or load the
  batch key's graph raises ``GraphUnavailable``: the whole batch gets ``model_unavailable`` at once.
- Requests whose deadline passed are answered ``timed_out`` and never run.
- Entries reclaimed from a dead worker are run alone: one of them may be what killed it, and
  alone it can only take itself down (until ``max_deliveries`` dead-letters it).
- SIGTERM: the batch in flight finishes, the loop stops reading, held-but-unstarted requests
  are handed straight back to the group.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Sequence

import redis

from service.engine.batching import Batcher, Runner
from service.engine.connection import connect
from service.engine.consumer import Consumer, Err, Ok, QueuedRequest, Reply
from service.engine.errors import ErrorKind, GraphUnavailable
from service.engine.heartbeat import Heartbeat, WorkerInfo, live_workers
from service.engine.metrics import WorkerMetrics
from service.engine.settings import WorkerSettings

log = logging.getLogger(__name__)

_REDIS_RETRY_S = 1.0
_CONNECT_FIRST_RETRY_S, _CONNECT_MAX_RETRY_S = 0.1, 5.0  # backoff while Redis is not up yet
_POLL_S = 0.001  # polling period while a partial batch waits (see _fill)


class Worker:
    """Runs until ``stop()``; ``run()`` may be called on any thread (signals are ``main``'s job)."""

    def __init__(
        self,
        settings: WorkerSettings,
        runner: Runner,
        *,
        client: redis.Redis | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.runner = runner
        self.metrics = metrics or WorkerMetrics()
        if hasattr(runner, "attach_metrics"):  # runners that export lazily count cache hits/misses
            runner.attach_metrics(self.metrics)
        if client is None:
            if settings.redis_url is None:
                raise ValueError("WorkerSettings.redis_url is not set and no Redis client was given")
            # Blocking reads last up to read_block_ms; the socket timeout must outlast them.
            timeout_s = settings.read_block_ms / 1000 + 5
            client = connect(settings.redis_url, socket_timeout=timeout_s)
        self.queue = Consumer(client, settings.queue, ensure=False)  # run() creates the group once Redis answers
        self._batcher = Batcher(settings.max_batch_size, settings.max_wait_ms, settings.adaptive_wait)
        self._stopping = threading.Event()
        # entry id -> deadline of everything this worker holds; the heartbeat renews their leases.
        self._held: dict[str, float] = {}
        self._held_lock = threading.Lock()
        self._answered = 0
        self._started_at = time.time()
        self._heartbeat = Heartbeat(
            self.queue.redis,
            settings.queue.heartbeat_key(settings.consumer),
            settings.heartbeat_interval_s,
            settings.heartbeat_ttl_s,
            self._info,
            on_beat=self._renew_leases,
        )

    @property
    def consumer(self) -> str:
        return self.settings.consumer

    def stop(self) -> None:
        """Ask the loop to finish the batch in flight and exit. Safe from signal handlers."""
        self._stopping.set()

    def run(self) -> None:
        log.info(
            "worker %s started (batch %d, wait %g ms)",
            self.consumer,
            self.settings.max_batch_size,
            self.settings.max_wait_ms,
        )
        if not self._wait_for_redis():
            return
        self._heartbeat.start()
        next_reclaim = time.monotonic()
        try:
            while not self._stopping.is_set():
                try:
                    now = time.monotonic()
                    if now >= next_reclaim:
                        self._reclaim()
                        next_reclaim = now + self.settings.reclaim_interval_ms / 1000
                    self._fill(until=next_reclaim)
                    # One batch per turn: what arrived while it ran is read before the next cut, so
                    # lanes that waited behind it leave full instead of with whatever they held then.
                    if not self._stopping.is_set() and (batch := self._batcher.pop_due(time.monotonic())):
                        self._process(*batch)
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    # Redis restarting or unreachable: wait and retry. Whatever was run but not
                    # answered stays pending and is reclaimed and re-run after the outage.
                    log.error("lost Redis (%s); retrying in %g s", exc, _REDIS_RETRY_S)
                    self._stopping.wait(_REDIS_RETRY_S)
        finally:
            self._shutdown()

    def _wait_for_redis(self) -> bool:
        """Retry, with backoff, until Redis answers and the group exists: compose and Kubernetes start things
        in any order. False if stopped meanwhile; raises the last error after ``connect_timeout_s``."""
        deadline = time.monotonic() + self.settings.connect_timeout_s
        delay = _CONNECT_FIRST_RETRY_S
        while True:
            try:
                self.queue.ensure_group()
                return True
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    log.error("Redis did not answer within connect_timeout_s (%g s): %s",
                              self.settings.connect_timeout_s, exc)
                    raise
                log.warning("waiting for Redis (%s); retrying in %.1f s, giving up in %.0f s", exc, delay, left)
                if self._stopping.wait(min(delay, left)):
                    return False
                delay = min(2 * delay, _CONNECT_MAX_RETRY_S)

    # ------------------------------------------------------------------ loop steps

    def _fill(self, until: float) -> None:
        """Read new entries, blocking no longer than the next batch cut or reclaim tick."""
        now = time.monotonic()
        due_in = self._batcher.time_until_due(now)
        wait_s = min(until - now, self.settings.read_block_ms / 1000)
        if due_in is not None:
            wait_s = min(wait_s, due_in)
        room = self.settings.effective_prefetch - len(self._batcher)
        if room <= 0:
            # Full hands: some lane is due within max_wait_ms, so just wait for it.
            time.sleep(max(0.0, wait_s))
            return
        if due_in is not None:
            # A lane is waiting for company. Redis ends a short BLOCK on its own timer, tens of ms
            # late (measured: 5 ms asked, ~25 ms spent), so poll without blocking and sleep here.
            requests = self.queue.read(self.consumer, room, None)
            if not requests:
                time.sleep(min(max(0.0, wait_s), _POLL_S))
        else:
            block_ms = int(wait_s * 1000)
            requests = self.queue.read(self.consumer, room, block_ms if block_ms > 0 else None)
        self._admit(requests, fresh=True)

    def _reclaim(self) -> None:
        """Take over idle entries of dead workers, one at a time, and run each alone.

        One at a time because one of them may be what killed its worker: claimed together, the
        innocent ones would share its fate (and its delivery count) if it kills this worker too.
        """
        s = self.settings
        try:
            alive = [w.consumer for w in live_workers(self.queue.redis, s.queue.prefix)]
            self.queue.prune_consumers(s.reclaim_idle_ms, live=[*alive, self.consumer])
            for _ in range(self.settings.effective_prefetch):  # bounded, so reading resumes
                if self._stopping.is_set():
                    return
                reclaimed = self.queue.reclaim(self.consumer, s.reclaim_idle_ms, count=1)
                if reclaimed.dead_lettered:
                    self.metrics.dead_lettered.inc(len(reclaimed.dead_lettered))
                    self.metrics.count_outcomes(
                        [ErrorKind.DEAD_LETTERED.value] * len(reclaimed.dead_lettered)
                    )
                if reclaimed.requests:
                    log.warning("reclaimed request %s", reclaimed.requests[0].request_id)
                    self.metrics.reclaimed.inc(len(reclaimed.requests))
                    self._admit(reclaimed.requests, fresh=False)
                if not reclaimed.requests and not reclaimed.dead_lettered:
                    return
        except redis.RedisError as exc:
            log.warning("reclaim failed, will retry: %s", exc)

    def _admit(self, requests: list[QueuedRequest], fresh: bool) -> None:
        """Answer what cannot run (expired, unreadable); batch fresh ones, run reclaimed ones alone."""
        if not requests:
            return
        now = time.time()
        rejected: list[tuple[QueuedRequest, Reply]] = []
        runnable: list[QueuedRequest] = []
        for r in requests:
            if r.load_error is not None:
                rejected.append((r, Err(*r.load_error)))
            elif r.expired(now):
                rejected.append((r, _timed_out(r, now)))
            else:
                runnable.append(r)
        with self._held_lock:
            self._held.update((r.entry_id, r.deadline) for r in runnable)
        self._respond(rejected)
        if fresh:
            self._batcher.add(runnable, time.monotonic())
        else:
            for r in runnable:
                self._process(r.batch_key, [r])

    def _process(self, batch_key: str, batch: list[QueuedRequest]) -> None:
        now = time.time()
        live = [r for r in batch if not r.expired(now)]
        outcomes: list[tuple[QueuedRequest, Reply]] = [
            (r, _timed_out(r, now)) for r in batch if r.expired(now)
        ]
        if live:
            for r in live:
                self.metrics.queue_wait.observe(max(0.0, now - r.enqueued_at))
            outcomes.extend(zip(live, self._run(batch_key, live), strict=True))
        newest = self._respond(outcomes)
        if newest is not None:
            self._batcher.answered(batch_key, newest)

    def _run(self, batch_key: str, batch: list[QueuedRequest]) -> list[Reply]:
        inputs = [r.tensors for r in batch if r.tensors is not None]
        assert len(inputs) == len(batch), "requests without tensors are answered in _admit"
        self.metrics.batch_size.observe(len(batch))
        started = time.perf_counter()
        try:
            results = self.runner.run(batch_key, inputs)
            if len(results) != len(batch):
                raise RuntimeError(f"runner returned {len(results)} results for {len(batch)} requests")
        except GraphUnavailable as exc:
            log.error("batch of %d (%s) not run: %s", len(batch), batch_key, exc)
            return [Err(ErrorKind.MODEL_UNAVAILABLE, str(exc)) for _ in batch]
        except Exception as exc:
            if len(batch) == 1:
                return [_failed(batch[0], exc)]
            log.info("batch of %d (%s) failed (%r); rerunning one by one", len(batch), batch_key, exc)
            return [self._run(batch_key, [r])[0] for r in batch]
        finally:
            self.metrics.inference_time.observe(time.perf_counter() - started)
        return [Ok(result) for result in results]

    def _respond(self, outcomes: list[tuple[QueuedRequest, Reply]]) -> str | None:
        """Answer; returns the newest stream id queued before the answers went out (see ``Batcher.answered``)."""
        if not outcomes:
            return None
        try:
            sent, newest = self.queue.respond(outcomes)
        finally:
            # Answered, or (if Redis failed) left to be reclaimed: either way no longer ours to renew.
            with self._held_lock:
                for r, _ in outcomes:
                    self._held.pop(r.entry_id, None)
        self._answered += len(sent)
        self.metrics.count_outcomes(sent)
        return newest

    def _shutdown(self) -> None:
        leftover = self._batcher.drain()
        try:
            if leftover:
                log.info("handing %d unstarted requests back to the group", len(leftover))
                self.queue.release(leftover)
                with self._held_lock:
                    self._held.clear()
            self.queue.remove_consumer(self.consumer)
        except redis.RedisError as exc:  # they stay pending and get reclaimed instead
            log.warning("could not hand back %d requests: %s", len(leftover), exc)
        self._heartbeat.stop()
        log.info("worker %s stopped after %d answers", self.consumer, self._answered)

    # ------------------------------------------------------------------ heartbeat hooks

    def _info(self) -> WorkerInfo:
        return WorkerInfo(
            consumer=self.consumer,
            pid=os.getpid(),
            host=socket.gethostname(),
            started_at=self._started_at,
            beat_at=time.time(),
            state="draining" if self._stopping.is_set() else "running",
            answered=self._answered,
        )

    def _renew_leases(self) -> None:
        # Past-deadline entries are not renewed: if this worker is wedged, someone else reclaims
        # them and answers timed_out, instead of the caller's entry being held forever.
        now = time.time()
        with self._held_lock:
            ids = [eid for eid, deadline in self._held.items() if deadline > now]
        self.queue.renew(self.consumer, ids)


def _failed(request: QueuedRequest, exc: Exception) -> Err:
    """The reply of a request that raised when run alone. ``ValueError`` (and its kin: payload errors) is what
    input validation raises (the runner's shape checks, ``plan_inputs``): the request's fault, ``bad_request``.
    Anything else — out of memory, a runtime error, a bug — is the worker's: ``internal_error`` with the
    traceback in this log, and no server details in the reply."""
    if isinstance(exc, ValueError):
        log.info("request %s failed on its input: %r", request.request_id, exc)
        return Err(ErrorKind.BAD_REQUEST, f"{type(exc).__name__}: {exc}")
    log.error("request %s failed on the worker's side", request.request_id, exc_info=exc)
    return Err(ErrorKind.INTERNAL, f"{type(exc).__name__} in the worker (its log has the traceback under request "
                                   f"{request.request_id})")


def _timed_out(request: QueuedRequest, now: float) -> Err:
    late = now - request.deadline
    return Err(ErrorKind.TIMED_OUT, f"deadline passed {late:.3f} s before a worker could run it")


def load_runner(spec: str, settings: WorkerSettings | None = None) -> Runner:
    """Build a runner from ``"package.module:factory"``; ``factory()`` (or ``factory(settings)``, when it takes
    a parameter) must return a ``Runner``."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--runner must look like 'package.module:factory', got {spec!r}")
    factory = getattr(importlib.import_module(module_name), attr)
    required = [p for p in inspect.signature(factory).parameters.values() if p.default is inspect.Parameter.empty]
    runner = factory(settings) if required else factory()
    if not isinstance(runner, Runner):
        raise TypeError(f"{spec}() returned {type(runner).__name__}, which has no run(batch_key, requests)")
    return runner


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m service.engine.worker --runner module:factory``: a worker around any runner (the AnySat
    model's is ``anysat worker``, ``service.runtime.worker``)."""
    from service.engine.cli import worker_main

    return worker_main(argv, WorkerSettings, prog="python -m service.engine.worker")


if __name__ == "__main__":
    sys.exit(main())
