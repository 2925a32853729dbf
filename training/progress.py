"""Progress bar (tqdm when installed, else a plain line every few steps) and the CSV losses log."""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path
from typing import Any, TextIO


class Progress:
    def __init__(self, total: int, initial: int = 0, desc: str = "", enabled: bool = True) -> None:
        self.total, self.n, self.desc, self.enabled = total, initial, desc, enabled
        self.t0, self.last = time.monotonic(), 0.0
        self._bar: Any = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                self._bar = None
            else:
                self._bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True)

    def update(self, **postfix: float) -> None:
        self.n += 1
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
            self._bar.update(1)
            return
        now = time.monotonic()
        if now - self.last >= 2.0 or self.n == self.total:
            self.last = now
            rate = (self.n) / max(now - self.t0, 1e-9)
            items = " ".join(f"{k}={v:.4g}" for k, v in postfix.items())
            print(f"{self.desc} {self.n}/{self.total} [{now - self.t0:.0f}s, {rate:.2f} it/s] {items}",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class CsvLog:
    """Append-only CSV; the header is fixed by the first row (a resumed run appends to the same file)."""

    def __init__(self, path: str | Path, fields: list[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._file: TextIO = self.path.open("a", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=fields)
        if new:
            self._writer.writeheader()

    def write(self, row: dict[str, Any]) -> None:
        self._writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_csv(path: str | Path) -> list[dict[str, str]]:
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))
