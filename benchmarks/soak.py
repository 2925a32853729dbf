"""Soak: the whole service (`anysat serve`: gateway + private Redis + worker) under steady load;
memory of each process sampled over time. Flat lines after warm-up are the pass criterion.

    python -m benchmarks.soak                       # 10 minutes, 8 callers, demo encoder
    python -m benchmarks.soak --seconds 120 --callers 4

Requests are TreeSatAI-shaped tiles (aerial 300 px + s2 + s1-asc, random date counts, patch
20 m) posted as JSON through ``service.client``; every response is checked for its shape.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.proc import status_mb
from benchmarks.stack import anysat_serve
from service.client import AnySatClient

REPO = Path(__file__).resolve().parents[1]


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _rss_by_role(root: int) -> dict[str, float]:
    roles: dict[str, float] = {}
    for pid in _descendants(root):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            rss = status_mb("VmRSS", pid)
        except (OSError, ValueError):
            continue
        role = "redis" if "redis-server" in cmd else "worker" if "service.runtime.worker" in cmd else \
            "gateway" if pid == root else None
        if role:
            roles[role] = roles.get(role, 0.0) + rss
    return roles


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--callers", type=int, default=8)
    parser.add_argument("--interval", type=float, default=30)
    parser.add_argument("--checkpoint", default=str(REPO / "artifacts" / "demo" / "encoder.safetensors"))
    args = parser.parse_args(argv)

    tmp = tempfile.mkdtemp(prefix="anysat-soak-")
    env = {"ANYSAT_CHECKPOINT": args.checkpoint, "ANYSAT_EXPORT_DIR": tmp}
    with open(os.devnull, "wb") as quiet, anysat_serve(env, log=quiet) as serve:
        url = serve.url

        stop = threading.Event()
        done, errors = [0], [0]
        lock = threading.Lock()

        def caller(seed: int) -> None:
            rng = np.random.default_rng(seed)
            with AnySatClient(url, timeout_s=120) as client:
                while not stop.is_set():
                    t2, t1 = int(rng.integers(20, 60)), int(rng.integers(20, 60))
                    tile = {"aerial": rng.standard_normal((4, 300, 300), dtype=np.float32),
                            "s2": rng.standard_normal((t2, 10, 6, 6), dtype=np.float32),
                            "s1-asc": rng.standard_normal((t1, 2, 6, 6), dtype=np.float32)}
                    dates = {"s2": np.sort(rng.integers(1, 366, t2)).tolist(),
                             "s1-asc": np.sort(rng.integers(1, 366, t1)).tolist()}
                    try:
                        result = client.embed(tile, dates=dates, patch_size=20, normalize="none")
                        ok = len(result) == 1
                    except Exception:
                        ok = False
                    with lock:
                        done[0] += ok
                        errors[0] += not ok

        threads = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(args.callers)]
        for t in threads:
            t.start()
        start = time.monotonic()
        samples = []
        print("| t (s) | requests | errors | gateway RSS MB | worker RSS MB | redis RSS MB |", flush=True)
        print("|---|---|---|---|---|---|", flush=True)
        while (elapsed := time.monotonic() - start) < args.seconds:
            time.sleep(min(args.interval, max(0.0, args.seconds - elapsed)))
            rss = _rss_by_role(serve.pid)
            samples.append(rss)
            print(f"| {time.monotonic() - start:.0f} | {done[0]} | {errors[0]} | {rss.get('gateway', 0):.0f} | "
                  f"{rss.get('worker', 0):.0f} | {rss.get('redis', 0):.1f} |", flush=True)
        stop.set()
        for t in threads:
            t.join(timeout=150)
        if len(samples) >= 3:
            warm, last = samples[1], samples[-1]
            print("\nafter warm-up (2nd sample -> last): " + ", ".join(
                f"{k} {warm[k]:.0f} -> {last.get(k, 0):.0f} MB ({last.get(k, 0) - warm[k]:+.0f})" for k in warm))
        print(f"{done[0]} requests answered, {errors[0]} errors, {args.callers} callers, {args.seconds:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
