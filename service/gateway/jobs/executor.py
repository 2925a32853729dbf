"""A scene job's tiles through the worker fleet: each tile is an ordinary queued request (same batch keys, same
workers, same at-least-once delivery as /v1 requests), so a job spreads over every worker there is.

A tile whose request was lost (dead-lettered, timed out, its reply never came) is queued again under a new id, up
to ``attempts`` times; a full queue is waited out rather than failing the job. A tile the model refuses is the
job's error, naming the tile."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence

import numpy as np

from scene.errors import SceneError
from service.engine.errors import BadRequest, ModelUnavailable, Overloaded, RequestFailed, ResultTimeout
from service.engine.producer import Producer
from service.gateway.scenes.executor import TileRequest

log = logging.getLogger("anysat.jobs")

_SLICE_S = 1.0
_GRACE_S = 2.0  # past the deadline, so a worker's own `timed_out` answer arrives before our timeout


class Stopped(Exception):
    """The job was cancelled or its owner lost the lease while tiles were in the queue."""


class QueueExecutor:
    def __init__(self, producer: Producer, job_id: str, *, deadline_s: float, attempts: int,
                 should_stop: Callable[[], bool] = lambda: False) -> None:
        self.producer = producer
        self.job_id = job_id
        self.deadline_s = deadline_s
        self.attempts = attempts
        self.should_stop = should_stop
        self.requeued = 0  # tiles queued again after a lost request (for the job's record)

    def _enqueue(self, r: TileRequest) -> str:
        request_id = f"job-{self.job_id}-{r.tile_id}-{uuid.uuid4().hex[:8]}"
        while True:
            if self.should_stop():
                raise Stopped(self.job_id)
            try:
                return self.producer.enqueue(r.batch_key, r.tensors, request_id=request_id,
                                             deadline_s=self.deadline_s)
            except Overloaded as exc:  # the fleet is busy with other traffic: wait for room, don't fail the job
                time.sleep(exc.retry_after_s)

    def submit(self, batch: Sequence[TileRequest]) -> dict[str, dict[str, np.ndarray]]:
        pending = {r.tile_id: (r, self._enqueue(r), 1) for r in batch}
        results: dict[str, dict[str, np.ndarray]] = {}
        while pending:
            tile_id, (request, request_id, attempt) = next(iter(pending.items()))
            del pending[tile_id]
            try:
                results[tile_id] = self._wait(request_id)
            except BadRequest as exc:
                raise SceneError(f"tile {tile_id}", exc.message) from None
            except ModelUnavailable as exc:
                raise SceneError("model", exc.message) from None
            except (RequestFailed, ResultTimeout) as exc:
                if attempt >= self.attempts:
                    raise SceneError(f"tile {tile_id}", f"lost {attempt} times, last: {exc}") from None
                log.warning("job %s: tile %s queued again (%s)", self.job_id, tile_id, exc)
                self.requeued += 1
                pending[tile_id] = (request, self._enqueue(request), attempt + 1)
        return results

    def _wait(self, request_id: str) -> dict[str, np.ndarray]:
        # In slices, so a cancel (or a lost lease) stops the job within about a second, not a tile deadline.
        deadline = time.monotonic() + self.deadline_s + _GRACE_S
        while True:
            if self.should_stop():
                raise Stopped(self.job_id)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ResultTimeout(request_id, self.deadline_s + _GRACE_S)
            try:
                return self.producer.wait_result(request_id, timeout_s=min(_SLICE_S, remaining))
            except ResultTimeout:
                continue

    def close(self) -> None:
        pass
