"""Local worker processes of ``anysat serve``, kept running: a worker that exits is restarted with backoff,
logged, and counted (``anysat_gateway_worker_restarts_total``); ``/readyz`` reports them meanwhile.

Backoff doubles from 1 s to 30 s and resets once a worker has run for a minute, so a worker that crashes at
start does not spin, and a rare crash costs one second. A worker that refuses its settings (exit 2: invalid
settings; 3: a device it cannot use) is not restarted: it would refuse again; ``/readyz`` reports it as refused.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import Counter
from prometheus_client.multiprocess import mark_process_dead

from service.engine.redis_server import die_with_parent

log = logging.getLogger(__name__)

_FIRST_BACKOFF_S, _MAX_BACKOFF_S, _STABLE_S = 1.0, 30.0, 60.0
_REFUSED = frozenset({2, 3})  # the worker's exit statuses for settings it cannot run with
_POLL_S = 0.2


@dataclass
class _Slot:
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    backoff_s: float = _FIRST_BACKOFF_S
    restart_at: float | None = None  # monotonic time of the next start, while waiting to restart
    restarts: int = 0
    last_exit: int | None = None
    refused: bool = False  # exited with a _REFUSED status: left stopped


@dataclass
class WorkerSupervisor:
    """``n`` copies of ``command`` (environment ``env``, working directory ``cwd``), restarted when they exit."""

    command: Sequence[str]
    n: int
    env: dict[str, str]
    cwd: Path
    restarts_counter: Counter | None = None
    _slots: list[_Slot] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._slots = [_Slot() for _ in range(self.n)]
        for slot in self._slots:
            self._spawn(slot)
        self._thread = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)
        self._thread.start()

    def pids(self) -> list[int]:
        with self._lock:
            return [s.process.pid for s in self._slots if s.process is not None and s.process.poll() is None]

    def status(self) -> dict[str, Any]:
        """``{"expected", "running", "pids", "restarts", "restarting", "refused"}`` for ``/readyz`` (``pids``: the
        running workers', which readiness matches with heartbeats)."""
        with self._lock:
            pids = [s.process.pid for s in self._slots if s.process is not None and s.process.poll() is None]
            return {"expected": self.n, "running": len(pids), "pids": pids,
                    "restarts": sum(s.restarts for s in self._slots),
                    "restarting": sum(1 for s in self._slots if s.restart_at is not None),
                    "refused": sum(1 for s in self._slots if s.refused)}

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM every worker (each finishes its batch and hands the rest back), SIGKILL what outlasts it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            processes = [s.process for s in self._slots if s.process is not None]
        for p in processes:
            if p.poll() is None:
                p.terminate()
        for p in processes:
            try:
                p.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            self._forget_metrics(p.pid)

    def _forget_metrics(self, pid: int) -> None:
        # A dead worker's live gauges (graphs loaded, build info) must leave /metrics with it.
        if directory := self.env.get("PROMETHEUS_MULTIPROC_DIR"):
            mark_process_dead(pid, directory)

    def _spawn(self, slot: _Slot) -> None:
        # The workers die with this process (PDEATHSIG) even if it is SIGKILLed.
        slot.process = subprocess.Popen(list(self.command), env=self.env, cwd=self.cwd,
                                        preexec_fn=die_with_parent)
        slot.started_at, slot.restart_at = time.monotonic(), None

    def _watch(self) -> None:
        while not self._stop.wait(_POLL_S):
            now = time.monotonic()
            with self._lock:
                for i, slot in enumerate(self._slots):
                    self._tend(i, slot, now)

    def _tend(self, i: int, slot: _Slot, now: float) -> None:
        if slot.restart_at is not None:
            if now >= slot.restart_at and not self._stop.is_set():
                self._spawn(slot)
                slot.restarts += 1
                log.warning("restarted worker %d (pid %d, restart %d)", i, slot.process.pid if slot.process else -1,
                            slot.restarts)
                if self.restarts_counter is not None:
                    self.restarts_counter.inc()
            return
        if slot.process is None or (rc := slot.process.poll()) is None:
            return
        if rc in _REFUSED:
            self._forget_metrics(slot.process.pid)
            log.error("worker %d (pid %d) refused its settings (exit %d; its message is above): not restarted",
                      i, slot.process.pid, rc)
            slot.last_exit, slot.refused, slot.process = rc, True, None
            return
        if now - slot.started_at >= _STABLE_S:
            slot.backoff_s = _FIRST_BACKOFF_S
        slot.last_exit, slot.restart_at = rc, now + slot.backoff_s
        self._forget_metrics(slot.process.pid)
        log.error("worker %d (pid %d) exited with %s; restarting in %g s", i, slot.process.pid, rc, slot.backoff_s)
        slot.backoff_s = min(2 * slot.backoff_s, _MAX_BACKOFF_S)

