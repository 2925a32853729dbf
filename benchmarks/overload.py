"""Overload: ``anysat serve`` (gateway under uvicorn + private Redis + one real worker) under N concurrent
real-tile requests, with the in-flight cap on and off.

    python -m benchmarks.overload                          # 320 requests = 10 x max_in_flight 32, cap on and off
    python -m benchmarks.overload --requests 300 --modes cap --runtime eager

Each request is the shipped TreeSatAI tile (aerial 300 px uint8 + the first ``--dates`` dates of S2 uint16 and
S1 ascending float32, patch 20 m, tile output) as JSON, all N sent at once, each on its own connection. Per mode
it prints the statuses counted, p50/p95 latency of the 200s and of the 429s, the same for a small probe request
sent every 50 ms meanwhile (a 429's latency in the burst includes its client uploading the 0.5 MB body before it
can read the answer; the probe's shows the gateway's own), the wall time, and the gateway's resident memory idle
(after warm-up) and at its peak during the burst. ``off`` is the cap set out of reach
(max_in_flight = 100 x N): every request is admitted and waits in the gateway for its answer.

Traffic stays on 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

from benchmarks.proc import status_mb
from benchmarks.stack import anysat_serve

REPO = Path(__file__).resolve().parents[1]
TILE = REPO / "examples" / "data" / "treesatai-ts" / "Abies_alba_1_1005_WEFL_NLF"
TINY = REPO.parent / "shared" / "fixtures" / "reference" / "anysat_tiny_seed0.pth"
DEMO = REPO / "artifacts" / "demo" / "encoder.safetensors"


def request_body(dates: int) -> bytes:
    """The real tile as a JSON request (raw values; the gateway normalises them with the sensor table)."""
    from service.client import _to_base64
    from training.data.treesatai import read_treesatai_tile

    tile = read_treesatai_tile(TILE.with_suffix(".tif"), TILE.with_suffix(".h5"), ("aerial", "s2", "s1-asc"))
    s2, s1 = tile["s2"], tile["s1-asc"]
    assert s2.dates is not None and s1.dates is not None
    tiles = {"aerial": _to_base64(tile["aerial"].data),
             "s2": {**_to_base64(s2.data[:dates].astype(np.uint16)), "dates": s2.dates[:dates].tolist()},
             "s1-asc": {**_to_base64(s1.data[:dates]), "dates": s1.dates[:dates].tolist()}}
    return json.dumps({"patch_size": 20, "output": "tile", "tiles": [tiles]}).encode()


class PeakRss:
    """The gateway's peak resident memory over a block: its high-water mark reset first (clear_refs 5), and
    VmRSS sampled every 10 ms in case the kernel refuses the reset."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.sampled = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.hwm_reset = False
        self.peak_mb = 0.0

    def __enter__(self) -> PeakRss:
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
            self.hwm_reset = True
        except OSError:
            pass
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.peak_mb = max(self.sampled, status_mb("VmHWM", self.pid) if self.hwm_reset else 0.0)

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.sampled = max(self.sampled, status_mb("VmRSS", self.pid))


async def _burst(url: str, body: bytes, n: int, timeout_s: float) -> list[tuple[str, float]]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout_s) as client:
        async def one() -> tuple[str, float]:
            started = time.perf_counter()
            try:
                r = await client.post("/v1/embeddings", content=body, headers=headers)
                status = str(r.status_code)
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            return status, time.perf_counter() - started

        return list(await asyncio.gather(*(one() for _ in range(n))))


class Probe:
    """Small refused-or-served requests every 50 ms during the burst: how fast the gateway itself answers, apart
    from the seconds a burst's client spends uploading its own 0.5 MB bodies before it can read a 429."""

    def __init__(self, url: str, body: bytes) -> None:
        self.url, self.body = url, body
        self.answers: list[tuple[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self._stop.wait(0.05):
                started = time.perf_counter()
                try:
                    status = str(client.post("/v1/embeddings", content=self.body,
                                             headers={"content-type": "application/json"}).status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                self.answers.append((status, time.perf_counter() - started))


def small_body() -> bytes:
    """A 2-date, 60 m Sentinel-2 tile (a few KB): the probe's request."""
    from service.client import _to_base64

    s2 = {**_to_base64(np.full((2, 10, 6, 6), 3000, np.uint16)), "dates": [10, 20]}
    return json.dumps({"patch_size": 20, "tiles": [{"s2": s2}]}).encode()


def _pct(values: list[float]) -> str:
    if not values:
        return "-"
    p50, p95 = np.percentile(np.asarray(values) * 1000, [50, 95])
    return f"{p50:,.0f} / {p95:,.0f}"


def run_mode(mode: str, args: argparse.Namespace, body: bytes) -> dict[str, str]:
    cap = args.max_in_flight if mode == "cap" else 100 * args.requests
    flags = ["--checkpoint", str(args.checkpoint), "--max-in-flight", str(cap), "--request-deadline-s",
             str(args.deadline_s), "--log-level", "warning"]
    with anysat_serve({"ANYSAT_RUNTIME": args.runtime}, flags, ready_timeout_s=180) as serve:  # runtime: the worker's
        # Warm-up: the worker's first batch exports (onnx) or loads its graph; then batches of a few.
        for _ in range(2):
            r = httpx.post(f"{serve.url}/v1/embeddings", content=body, headers={"content-type": "application/json"},
                           timeout=600)
            if r.status_code != 200:
                raise RuntimeError(f"warm-up request answered {r.status_code}: {r.text[:300]}")
        asyncio.run(_burst(serve.url, body, min(8, cap), timeout_s=300))
        time.sleep(1.0)
        idle = status_mb("VmRSS", serve.proc.pid)
        started = time.perf_counter()
        with PeakRss(serve.proc.pid) as peak, Probe(serve.url, small_body()) as probe:
            answers = asyncio.run(_burst(serve.url, body, args.requests, timeout_s=args.client_timeout_s))
        wall = time.perf_counter() - started
    counts = Counter(s for s, _ in answers)
    return {
        "mode": mode, "max_in_flight": str(cap), "requests": str(args.requests),
        "statuses": " ".join(f"{k}:{v}" for k, v in sorted(counts.items())),
        "200 p50/p95 ms": _pct([t for s, t in answers if s == "200"]),
        "429 p50/p95 ms": _pct([t for s, t in answers if s == "429"]),
        "probe": " ".join(f"{k}:{v}" for k, v in sorted(Counter(s for s, _ in probe.answers).items())),
        "probe 429 p50/p95 ms": _pct([t for s, t in probe.answers if s == "429"]),
        "wall s": f"{wall:.1f}",
        "gateway RSS idle MB": f"{idle:.0f}", "peak MB": f"{peak.peak_mb:.0f}",
    }


def print_table(rows: list[dict[str, str]]) -> None:
    cols = list(rows[0])
    widths = [max(len(c), *(len(r[c]) for r in rows)) for c in cols]
    print(" | ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(r[c].ljust(w) for c, w in zip(cols, widths, strict=True)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.overload", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=320, help="concurrent requests (default 10 x 32)")
    parser.add_argument("--max-in-flight", type=int, default=32, help="the gateway's cap in mode 'cap'")
    parser.add_argument("--modes", default="cap,off", help="comma-separated: cap, off")
    parser.add_argument("--dates", type=int, default=12, help="S2 and S1 dates per request")
    parser.add_argument("--runtime", default="onnx", choices=("onnx", "eager", "torchscript"))
    parser.add_argument("--checkpoint", type=Path, default=TINY if TINY.is_file() else DEMO)
    parser.add_argument("--deadline-s", type=float, default=60.0, help="the gateway's request_deadline_s")
    parser.add_argument("--client-timeout-s", type=float, default=180.0)
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in ("cap", "off") for m in modes):
        parser.error("--modes: cap and/or off")
    if args.requests < 1 or args.requests > 2000:
        parser.error("--requests: 1..2000")
    body = request_body(args.dates)
    print(f"checkpoint {args.checkpoint.name}, runtime {args.runtime}, request body {len(body) / 1e6:.2f} MB "
          f"(aerial 300 px + {args.dates} dates of s2 and s1-asc), {os.cpu_count()} CPUs", flush=True)
    rows = [run_mode(m, args, body) for m in modes]
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
