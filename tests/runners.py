"""A test ``Runner``: a small real numpy computation standing in for the model (tested elsewhere).

``y = x * 2``; each result also reports the batch it ran in (``batch_id``, ``batch_size``), a
CRC of the batch key the runner was given, and the worker's pid, so tests can check batch
composition and who answered. Inputs with a ``poison`` tensor raise ``ValueError`` (bad input), a ``fault``
tensor ``RuntimeError`` (the runner's own failure); a ``crash`` tensor kills the
whole process (SIGKILL), as a segfaulting model would; an ``unavailable`` tensor makes the batch's graph
unavailable (``GraphUnavailable``), as a failed export would.

Worker processes build it with ``--runner runners:make_runner``; ``ANYSAT_TEST_SLEEP_S`` sets a
per-batch delay, and ``ANYSAT_TEST_MARK_DIR`` a directory where each batch drops a file on entry.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
import zlib
from pathlib import Path

import numpy as np

from service.engine.errors import GraphUnavailable


class DoublingRunner:
    def __init__(self, sleep_s: float = 0.0, mark_dir: str | None = None) -> None:
        self.sleep_s = sleep_s
        self.mark_dir = Path(mark_dir) if mark_dir else None
        self.calls: list[tuple[str, int]] = []  # (batch_key, batch size) per call, in-process use
        self._lock = threading.Lock()

    def run(self, batch_key: str, requests: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        with self._lock:
            self.calls.append((batch_key, len(requests)))
        if any("crash" in r for r in requests):
            os.kill(os.getpid(), signal.SIGKILL)
        if any("unavailable" in r for r in requests):
            raise GraphUnavailable("could not build or load the graph of this configuration: export failed")
        if any("poison" in r for r in requests):
            raise ValueError("poison pill in this request")
        if any("fault" in r for r in requests):
            raise RuntimeError("the runner broke on /srv/secret/path (a bug, not the input)")
        batch_id = uuid.uuid4().int >> 65  # fits int64
        if self.mark_dir is not None:
            (self.mark_dir / f"batch-{batch_id}-{len(requests)}").touch()
        if self.sleep_s:
            time.sleep(self.sleep_s)
        key_crc = np.int64(zlib.crc32(batch_key.encode()))
        return [
            {
                "y": r["x"] * 2,
                "batch_size": np.array(len(requests), dtype=np.int64),
                "batch_id": np.array(batch_id, dtype=np.int64),
                "key_crc": np.array(key_crc),
                "pid": np.array(os.getpid(), dtype=np.int64),
            }
            for r in requests
        ]


def make_runner() -> DoublingRunner:
    return DoublingRunner(
        sleep_s=float(os.environ.get("ANYSAT_TEST_SLEEP_S", "0")),
        mark_dir=os.environ.get("ANYSAT_TEST_MARK_DIR"),
    )
