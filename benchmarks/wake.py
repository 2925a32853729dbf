"""What a round trip to Redis costs back to back and after the processes have been idle.

    python -m benchmarks.wake                  # 1 KB enqueues and PINGs, 6 rounds of 30 per cell

A lone caller's request crosses three processes that have each been waiting (caller, Redis, worker). This times
the smallest real step, one ``RedisQueue.enqueue`` of a 1 KB tensor (and a ``PING``) on a private redis-server:
back to back, and after 50 ms idle with the caller sleeping or spinning, with the caller and Redis free to run on
any CPU or both pinned to CPU 0. The idle cells minus the back-to-back ones are what this machine charges for
waking up, and no code in the engine can remove it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from service.engine.queue import RedisQueue
from service.engine.redis_server import EmbeddedRedis


def _pause(seconds: float, spin: bool) -> None:
    if not spin:
        time.sleep(seconds)
        return
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.wake", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--per-round", type=int, default=30)
    parser.add_argument("--idle-ms", type=float, default=50)
    args = parser.parse_args(argv)
    tensors = {"x": np.zeros(256, np.float32)}  # 1 KB
    all_cpus = os.sched_getaffinity(0)
    rows = []
    with EmbeddedRedis() as url:
        queue = RedisQueue.from_url(url)
        redis_pid = int(queue.redis.info("server")["process_id"])
        steps = {"enqueue 1 KB": lambda: queue.enqueue("k", tensors, deadline_s=60),
                 "PING": queue.redis.ping}
        for pinned in (False, True):
            cpus = {min(all_cpus)} if pinned else all_cpus
            os.sched_setaffinity(0, cpus)
            os.sched_setaffinity(redis_pid, cpus)
            for name, step in steps.items():
                cells = {}
                for label, idle, spin in (("back to back", 0.0, False), ("idle, caller sleeping", args.idle_ms, False),
                                          ("idle, caller spinning", args.idle_ms, True)):
                    times = []
                    for _ in range(args.rounds):
                        for _ in range(args.per_round):
                            _pause(idle / 1000, spin)
                            started = time.perf_counter()
                            step()
                            times.append(time.perf_counter() - started)
                        queue.redis.delete(queue.settings.stream)
                        queue.redis.flushdb()
                        queue.ensure_group()
                    cells[label] = statistics.median(times) * 1000
                rows.append((name, "CPU 0 (both)" if pinned else "any", cells))
        os.sched_setaffinity(redis_pid, all_cpus)
    os.sched_setaffinity(0, all_cpus)

    labels = list(rows[0][2])
    print(f"\n## Round trip p50 (ms), {args.idle_ms:g} ms idle before each idle sample, "
          f"{args.rounds} x {args.per_round} per cell\n")
    print("| step | CPUs | " + " | ".join(labels) + " |")
    print("|---|---|" + "---|" * len(labels))
    for name, cpus, cells in rows:
        print(f"| {name} | {cpus} | " + " | ".join(f"{cells[label]:.2f}" for label in labels) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
