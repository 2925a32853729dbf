"""Serving benchmark: the queue + workers against the raw runtime, side by side in one run.

    python -m benchmarks.serving                       # tiny model, TreeSatAI configuration, B = 8
    python -m benchmarks.serving --size base --batch 4 --requests 64

Measures, on the TreeSatAI configuration (aerial 300 px + s2 + s1-asc, patch 20 m, tile output):
1. raw ONNX Runtime throughput at batch B (the worker's own session, no queue);
2. end-to-end throughput through Redis + one worker process at saturation, same B;
3. p50/p95/p99 end-to-end latency at 1, 8 and 32 concurrent callers, and the raw forward of one
   request (added latency = served p50 at 1 caller - raw forward);
4. mean batch size with three configurations interleaved at 32 callers (read from the worker's
   ``anysat_batch_size`` histogram);
5. resident memory of the worker, Redis used memory and key count, before and after the run.
Every request's date count is drawn at random, so batches also exercise date padding.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import redis
import torch

from benchmarks.proc import status_mb
from model import create_model, save_checkpoint
from model.checkpoint import file_sha256
from service.configuration import ModalityConfig
from service.export import ExportCache
from service.queue import RedisQueue
from service.redis_server import EmbeddedRedis
from service.runtime import stack_requests
from service.settings import QueueSettings

REPO = Path(__file__).resolve().parents[1]
CONFIGS = [
    ModalityConfig((("aerial", 300), ("s2", 6), ("s1-asc", 6)), patch_size=20),
    ModalityConfig((("s2", 6), ("s1-asc", 6)), patch_size=20),
    ModalityConfig((("aerial", 300), ("s2", 6)), patch_size=30),
]


def make_request(config: ModalityConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    from model.sensors import SENSORS

    out: dict[str, np.ndarray] = {}
    for name, side in config.modalities:
        s = SENSORS[name]
        if s.time_series:
            t = int(rng.integers(20, 60))
            out[name] = rng.standard_normal((t, s.channels, side, side), dtype=np.float32)
            out[f"{name}_dates"] = np.sort(rng.integers(1, 366, t)).astype(np.int64)
        else:
            out[name] = rng.standard_normal((s.channels, side, side), dtype=np.float32)
    return out


def percentiles(values: list[float]) -> tuple[float, float, float]:
    p = np.percentile(np.asarray(values) * 1000, [50, 95, 99])
    return float(p[0]), float(p[1]), float(p[2])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.serving", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--batch", type=int, default=8, help="max_batch_size of the worker = raw batch")
    parser.add_argument("--requests", type=int, default=128, help="requests per saturation measurement")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-wait-ms", type=float, default=5, help="worker max_wait_ms (default: its default)")
    parser.add_argument("--adaptive-wait", action=argparse.BooleanOptionalAction, default=True,
                        help="worker adaptive_wait (default: on, its default)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)

    with tempfile.TemporaryDirectory() as tmp_dir, EmbeddedRedis() as url:
        tmp = Path(tmp_dir)
        torch.manual_seed(0)
        ckpt = save_checkpoint(create_model(args.size), tmp / f"{args.size}.safetensors")
        cache = ExportCache(tmp / "exports", create_model(checkpoint=ckpt), file_sha256(ckpt))
        print(f"# exporting {len(CONFIGS)} configurations ({args.size}) ...", flush=True)
        exports = [cache.get(c)[0] for c in CONFIGS]

        # 1. Raw runtime at batch B, same session options as the worker.
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        session = ort.InferenceSession(str(exports[0].directory / "model.onnx"), opts)
        names = [i["name"] for i in exports[0].manifest["inputs"]]
        batch = stack_requests(CONFIGS[0], [make_request(CONFIGS[0], rng) for _ in range(args.batch)])
        feed = {n: batch[n] for n in names}
        session.run(None, feed)
        runs, start = 0, time.perf_counter()
        while time.perf_counter() - start < 10 or runs < 3:
            session.run(None, feed)
            runs += 1
        raw_tput = runs * args.batch / (time.perf_counter() - start)
        fixed = make_request(CONFIGS[0], rng)  # the same request for the raw and the served latency
        one = stack_requests(CONFIGS[0], [fixed])
        one_feed = {n: one[n] for n in names}

        # 2.-5. One worker process on the same Redis, same runtime and thread count.
        metrics_dir = tmp / "metrics"
        metrics_dir.mkdir()
        env = {**os.environ, "ANYSAT_CHECKPOINT": str(ckpt), "ANYSAT_RUNTIME": "onnx",
               "ANYSAT_EXPORT_DIR": str(tmp / "exports"), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
               "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(REPO)}
        worker = subprocess.Popen([sys.executable, "-m", "service.worker", "--redis-url", url, "--runner",
                                   "service.runtime:runner_from_env", "--max-batch-size", str(args.batch),
                                   "--max-wait-ms", str(args.max_wait_ms),
                                   "--adaptive-wait" if args.adaptive_wait else "--no-adaptive-wait"],
                                  env=env, cwd=REPO)
        queue = RedisQueue.from_url(url, QueueSettings())
        client = redis.Redis.from_url(url)

        def redis_state() -> tuple[float, int]:
            return client.info("memory")["used_memory"] / 2**20, int(client.dbsize())

        try:
            for config in CONFIGS:  # warm every configuration's session before measuring
                queue.wait_result(queue.enqueue(config.key(), make_request(config, rng), deadline_s=600), 600)
            mem_before = (status_mb("VmRSS", worker.pid), *redis_state())

            def call(config: ModalityConfig, request: dict[str, np.ndarray]) -> float:
                started = time.perf_counter()
                queue.wait_result(queue.enqueue(config.key(), request, deadline_s=600), 600)
                return time.perf_counter() - started

            def load(callers: int, n: int, configs: list[ModalityConfig]) -> tuple[float, list[float]]:
                work = [(configs[i % len(configs)], make_request(configs[i % len(configs)], rng)) for i in range(n)]
                started = time.perf_counter()
                with ThreadPoolExecutor(callers) as pool:
                    latencies = list(pool.map(lambda w: call(*w), work))
                return n / (time.perf_counter() - started), latencies

            served_tput, _ = load(4 * args.batch, args.requests, CONFIGS[:1])
            latency = {c: percentiles(load(c, args.requests, CONFIGS[:1])[1]) for c in (8, 32)}
            inf_before = _histogram(metrics_dir, "anysat_inference_seconds")
            # 1 caller: the raw forward's request, alternating with the raw forward itself so both
            # see the same machine (this host's speed drifts between minutes). The pauses let the
            # other side's ONNX Runtime threads stop spinning, which would steal one of the 2 cores.
            solo, raw_solo = [], []
            for _ in range(40):
                time.sleep(0.05)
                raw_solo.append(_timed(lambda: session.run(None, one_feed)))
                time.sleep(0.05)
                solo.append(call(CONFIGS[0], fixed))
            raw_one = statistics.median(raw_solo)
            inf_after = _histogram(metrics_dir, "anysat_inference_seconds")
            worker_forward = (inf_after[0] - inf_before[0]) / max(1.0, inf_after[1] - inf_before[1])
            latency = {1: percentiles(solo), **latency}
            before = _histogram(metrics_dir, "anysat_batch_size")
            mixed_tput, _ = load(32, 3 * args.requests, CONFIGS)
            after = _histogram(metrics_dir, "anysat_batch_size")
            mean_batch = (after[0] - before[0]) / max(1e-9, after[1] - before[1])
            time.sleep(1)  # let the last replies be read
            mem_after = (status_mb("VmRSS", worker.pid), *redis_state())
        finally:
            worker.terminate()
            worker.wait(timeout=60)

    print(f"\nTreeSatAI configuration, {args.size}, ONNX Runtime CPU, {args.threads} threads, max_batch_size "
          f"{args.batch}, max_wait_ms {args.max_wait_ms:g}, adaptive_wait {'on' if args.adaptive_wait else 'off'}, "
          "one worker process\n")
    print("| measurement | value |")
    print("|---|---|")
    print(f"| raw ONNX Runtime throughput at B={args.batch} | {raw_tput:.2f} tiles/s |")
    print(f"| served throughput at saturation (Redis + worker) | {served_tput:.2f} tiles/s |")
    print(f"| served / raw | {served_tput / raw_tput:.2f} |")
    print(f"| raw forward, 1 request | {raw_one * 1000:.1f} ms |")
    for c, (p50, p95, p99) in latency.items():
        print(f"| end-to-end latency, {c} concurrent caller{'s' if c > 1 else ''}: p50 / p95 / p99 | "
              f"{p50:.1f} / {p95:.1f} / {p99:.1f} ms |")
    print(f"| added p50 latency at 1 caller (served p50 - raw forward) | {latency[1][0] - raw_one * 1000:.1f} ms |")
    print(f"| the same forward inside the worker (inference histogram), 1 caller | {worker_forward * 1000:.1f} ms |")
    print(f"| queue overhead at 1 caller (served p50 - worker forward) | "
          f"{latency[1][0] - worker_forward * 1000:.1f} ms |")
    print(f"| mean batch size, 3 interleaved configurations, 32 callers | {mean_batch:.2f} "
          f"({mean_batch / args.batch:.2f} x max_batch_size) |")
    print(f"| throughput, 3 interleaved configurations | {mixed_tput:.2f} tiles/s |")
    print(f"| worker RSS before / after | {mem_before[0]:.0f} / {mem_after[0]:.0f} MB |")
    print(f"| Redis used memory before / after | {mem_before[1]:.1f} / {mem_after[1]:.1f} MB |")
    print(f"| Redis keys before / after (done-markers expire after result_ttl_s) | {mem_before[2]} / {mem_after[2]} |")
    return 0


def _timed(fn) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _histogram(directory: Path, name: str) -> tuple[float, float]:
    """(sum, count) of one of the worker's histograms, summed over processes."""
    from service.metrics import multiprocess_registry

    total = count = 0.0
    for metric in multiprocess_registry(str(directory)).collect():
        if metric.name == name:
            for s in metric.samples:
                if s.name.endswith("_sum"):
                    total += s.value
                elif s.name.endswith("_count"):
                    count += s.value
    return total, count


if __name__ == "__main__":

    raise SystemExit(main())
