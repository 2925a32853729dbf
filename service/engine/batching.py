"""Dynamic batching: which queued requests run together, and the ``Runner`` they run on.

Pure bookkeeping, no Redis and no clock of its own (callers pass ``now``), so every rule here is
unit-testable: a batch holds one batch key only; it is cut at ``max_batch_size`` or when its
oldest request has waited ``max_wait_ms``, whichever comes first; among keys that are due, the
one whose oldest request arrived first goes first, so a busy key cannot starve a quiet one.

Adaptive wait: waiting only pays when company is likely to come within ``max_wait_ms``. Each key
keeps two moving averages, and a partial batch is cut at once unless both say company is coming:
- the gap between its arrivals (as the worker reads them): requests further apart than ``max_wait_ms``
  will not meet;
- how often an arrival found earlier requests of the key still unanswered (waiting in a lane, or queued
  before the key's last batch was answered: the worker reports the stream's newest entry id at each answer,
  see ``answered``). A caller that waits for each answer before sending its next request never overlaps
  itself, however short its gaps, so with a fast model it would otherwise pay ``max_wait_ms`` on every
  request for company that cannot come.
A lone caller then pays no wait, while under load the backlog is read in one go, overlaps, and batches
form as before.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from service.engine.connection import stream_id
from service.engine.consumer import QueuedRequest

_SMOOTHING = 0.25  # weight of the newest arrival: a few arrivals at a new rate change the decision
_MIN_OVERLAP = 0.5  # share of arrivals meeting unanswered requests of their key below which waiting is pointless
_MAX_KEYS = 1024  # arrival history is kept for this many recently seen keys


@runtime_checkable
class Runner(Protocol):
    """What the engine needs from a model runtime (ONNX Runtime, TorchScript, Triton, a stub).

    ``run`` gets requests that all share ``batch_key`` and returns one result per request, in the
    same order. It may raise; the worker then retries request by request to find the culprit.
    """

    def run(self, batch_key: str, requests: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]: ...


@dataclass
class _Lane:
    waiting: deque[tuple[float, QueuedRequest]] = field(default_factory=deque)

    @property
    def oldest(self) -> float:
        return self.waiting[0][0]


@dataclass
class _Arrivals:
    last: float
    gap: float | None = None  # moving average of the time between arrivals; None until two arrived
    overlap: float = 0.0  # moving average of "this arrival met unanswered requests of its key" (0 or 1)
    answered_through: tuple[int, int] | None = None  # stream id: entries up to it came before the last answer


class Batcher:
    """Per-key lanes of requests a worker holds but has not run yet."""

    def __init__(self, max_batch_size: int, max_wait_ms: float, adaptive_wait: bool = True) -> None:
        assert max_batch_size >= 1 and max_wait_ms >= 0
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.adaptive_wait = adaptive_wait
        self._lanes: OrderedDict[str, _Lane] = OrderedDict()
        self._arrivals: OrderedDict[str, _Arrivals] = OrderedDict()  # recent keys only (_MAX_KEYS)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, requests: Iterable[QueuedRequest], now: float) -> None:
        for r in requests:
            lane = self._lanes.setdefault(r.batch_key, _Lane())
            seen = self._arrivals.get(r.batch_key)
            overlapped = bool(lane.waiting) or (
                seen is not None and seen.answered_through is not None
                and stream_id(r.entry_id) <= seen.answered_through
            )
            lane.waiting.append((now, r))
            self._size += 1
            self._arrived(r.batch_key, now, overlapped)

    def answered(self, key: str, newest_entry_id: str) -> None:
        """A batch of ``key`` was answered while ``newest_entry_id`` was the stream's newest entry (or the
        batch's own newest): requests of ``key`` read later with ids up to it were queued while it ran."""
        seen = self._arrivals.get(key)
        if seen is not None:
            seen.answered_through = stream_id(newest_entry_id)

    def expected_gap(self, key: str) -> float | None:
        """Moving average of the seconds between this key's arrivals; None before two arrived."""
        seen = self._arrivals.get(key)
        return None if seen is None else seen.gap

    def time_until_due(self, now: float) -> float | None:
        """Seconds until some batch must be cut (0 if one is due now); None when holding nothing."""
        if not self._lanes:
            return None
        return min(self._due_in(key, lane, now) for key, lane in self._lanes.items())

    def pop_due(self, now: float) -> tuple[str, list[QueuedRequest]] | None:
        """The next batch to run, or None if no key is full or has waited long enough."""
        due = [(lane.oldest, key) for key, lane in self._lanes.items() if self._due_in(key, lane, now) == 0.0]
        if not due:
            return None
        _, key = min(due)
        return key, self._take(key, self.max_batch_size)

    def drain(self) -> list[QueuedRequest]:
        """Everything still held, oldest key first (to hand back on shutdown)."""
        out: list[QueuedRequest] = []
        for key in sorted(self._lanes, key=lambda k: self._lanes[k].oldest):
            out.extend(self._take(key, len(self._lanes[key].waiting)))
        return out

    def _due_in(self, key: str, lane: _Lane, now: float) -> float:
        if len(lane.waiting) >= self.max_batch_size or self._company_unlikely(key):
            return 0.0
        return max(0.0, lane.oldest + self.max_wait_s - now)

    def _company_unlikely(self, key: str) -> bool:
        # No history (a key's first request) counts as unlikely: a burst is read in one go anyway.
        if not self.adaptive_wait:
            return False
        seen = self._arrivals.get(key)
        return seen is None or seen.gap is None or seen.gap > self.max_wait_s or seen.overlap < _MIN_OVERLAP

    def _arrived(self, key: str, now: float, overlapped: bool) -> None:
        seen = self._arrivals.get(key)
        if seen is None:
            self._arrivals[key] = _Arrivals(last=now, overlap=float(overlapped))
            if len(self._arrivals) > _MAX_KEYS:
                self._arrivals.popitem(last=False)
            return
        gap = now - seen.last
        seen.gap = gap if seen.gap is None else seen.gap + _SMOOTHING * (gap - seen.gap)
        seen.overlap += _SMOOTHING * (overlapped - seen.overlap)
        seen.last = now
        self._arrivals.move_to_end(key)

    def _take(self, key: str, n: int) -> list[QueuedRequest]:
        lane = self._lanes[key]
        batch = [lane.waiting.popleft()[1] for _ in range(min(n, len(lane.waiting)))]
        if not lane.waiting:
            del self._lanes[key]
        self._size -= len(batch)
        return batch
