"""Serving benchmark: the queue + workers against the raw runtime, side by side in one run.

    python -m benchmarks.serving                       # tiny model, TreeSatAI configuration, B = 8
    python -m benchmarks.serving --size base --batch 4 --requests 64

Measures, on the TreeSatAI configuration (aerial 300 px + s2 + s1-asc, patch 20 m, tile output):
1. raw ONNX Runtime throughput at batch B (the worker's own session, no queue);
2. end-to-end throughput through Redis + one worker process at saturation, same B, in rounds alternating with 1.;
3. p50/p95/p99 end-to-end latency at 1, 8 and 32 concurrent callers, and the raw forward of one request. The
   added latency at 1 caller three ways: sporadic (50 ms idle before each request; the median of each served
   request minus the raw forward just before it), the same requests minus the worker's own run of each, and back
   to back (alternating blocks of raw forwards and served requests);
4. mean batch size with three configurations interleaved at 32 callers (read from the worker's
   ``anysat_batch_size`` histogram);
5. resident memory of the worker, Redis used memory and key count, before and after the run;
6. the engine alone: the 1-caller latency through a worker whose runner answers at once, for the tile queued
   as raw values (as the gateway does) and as normalised float32, alternating, and back to back.
Requests are cut from the real TreeSatAI tile and sent as the gateway queues them: raw values in the sensors'
own dtypes (aerial uint8, Sentinel-2 uint16) with per-band statistics, normalised by the worker. Every request's
date count is drawn at random, so batches also exercise date padding.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
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
from service.engine.payload import STATS_SUFFIX
from service.engine.queue import RedisQueue
from service.engine.redis_server import EmbeddedRedis
from service.engine.settings import QueueSettings
from service.runtime.configuration import ModalityConfig
from service.runtime.export import ExportCache
from service.runtime.runner import session_options, stack_requests

REPO = Path(__file__).resolve().parents[1]
CONFIGS = [
    ModalityConfig((("aerial", 300), ("s2", 6), ("s1-asc", 6)), patch_size=20),
    ModalityConfig((("s2", 6), ("s1-asc", 6)), patch_size=20),
    ModalityConfig((("aerial", 300), ("s2", 6)), patch_size=30),
]


BLOCK = 10  # requests per back-to-back block


def make_request(config: ModalityConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One request as the gateway queues it, cut from the real TreeSatAI tile: raw values in the sensors'
    own dtypes (aerial uint8, Sentinel-2 uint16 reflectance, Sentinel-1 float32) with the statistics the
    worker normalises them with, and a random 20-59 of each series' dates so batches need date padding."""
    from model.sensors import SENSORS

    tile = _treesat_tile()
    out: dict[str, np.ndarray] = {}
    for name, _side in config.modalities:
        item = tile[name]
        if SENSORS[name].time_series:
            keep = np.sort(rng.choice(len(item.dates), size=int(rng.integers(20, 60)), replace=False))
            out[name], out[f"{name}_dates"] = item.data[keep], item.dates[keep].astype(np.int64)
        else:
            out[name] = item.data
        stats = SENSORS[name].stats
        out[f"{name}{STATS_SUFFIX}"] = np.asarray([stats.mean, stats.std], dtype=np.float32)
    return out


@functools.cache
def _treesat_tile() -> dict:
    from benchmarks.encoder import TILE
    from training.data.treesatai import read_treesatai_tile

    tile = read_treesatai_tile(TILE.with_suffix(".tif"), TILE.with_suffix(".h5"), ("aerial", "s2", "s1-asc"))
    s2 = tile["s2"]  # integer reflectances stored as float32 in the HDF5; a client sends them as uint16
    assert np.array_equal(s2.data, np.round(s2.data)) and s2.data.max() < 2**16
    return {**tile, "s2": dataclasses.replace(s2, data=s2.data.astype(np.uint16))}


def percentiles(values: list[float]) -> tuple[float, float, float]:
    p = np.percentile(np.asarray(values) * 1000, [50, 95, 99])
    return float(p[0]), float(p[1]), float(p[2])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.serving", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--batch", type=int, default=8, help="max_batch_size of the worker = raw batch")
    parser.add_argument("--requests", type=int, default=128, help="requests per saturation round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating served/raw saturation rounds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--solo-pairs", type=int, default=60, help="raw/served pairs for the 1-caller latency")
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
        session = ort.InferenceSession(str(exports[0].directory / "model.onnx"), session_options(args.threads))
        # ...and with ORT's default of threads spinning on after run(), to show what stopping them costs a forward.
        spinning = ort.SessionOptions()
        spinning.intra_op_num_threads = args.threads
        spin_session = ort.InferenceSession(str(exports[0].directory / "model.onnx"), spinning)
        names = [i["name"] for i in exports[0].manifest["inputs"]]
        batch = stack_requests(CONFIGS[0], [make_request(CONFIGS[0], rng) for _ in range(args.batch)])
        feed = {n: batch[n] for n in names}
        session.run(None, feed)

        def raw_throughput(seconds: float) -> float:
            runs, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds or runs < 3:
                session.run(None, feed)
                runs += 1
            return runs * args.batch / (time.perf_counter() - start)

        fixed = make_request(CONFIGS[0], rng)  # the same request for the raw and the served latency
        one = stack_requests(CONFIGS[0], [fixed])
        one_feed = {n: one[n] for n in names}

        # 2.-5. One worker process on the same Redis, same runtime and thread count.
        metrics_dir = tmp / "metrics"
        metrics_dir.mkdir()
        env = {**os.environ, "ANYSAT_CHECKPOINT": str(ckpt), "ANYSAT_RUNTIME": "onnx",
               "ANYSAT_EXPORT_DIR": str(tmp / "exports"), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
               "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(REPO)}
        worker = subprocess.Popen([sys.executable, "-m", "service.runtime.worker", "--redis-url", url,
                                   "--max-batch-size", str(args.batch),
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

            def call(q: RedisQueue, config: ModalityConfig, request: dict[str, np.ndarray]) -> float:
                started = time.perf_counter()
                q.wait_result(q.enqueue(config.key(), request, deadline_s=600), 600)
                return time.perf_counter() - started

            def load(callers: int, n: int, configs: list[ModalityConfig]) -> tuple[float, list[float]]:
                work = [(configs[i % len(configs)], make_request(configs[i % len(configs)], rng)) for i in range(n)]
                started = time.perf_counter()
                with ThreadPoolExecutor(callers) as pool:
                    latencies = list(pool.map(lambda w: call(queue, *w), work))
                return n / (time.perf_counter() - started), latencies

            # Saturation: rounds of served requests, each followed by raw forwards for as long, so a drift of the
            # machine's speed (tens of percent within minutes here) hits both sides alike.
            served_rates, raw_rates = [], []
            for _ in range(args.rounds):
                started = time.perf_counter()
                served_rates.append(load(4 * args.batch, args.requests, CONFIGS[:1])[0])
                time.sleep(0.05)
                raw_rates.append(raw_throughput(time.perf_counter() - started))
            served_tput, raw_tput = statistics.median(served_rates), statistics.median(raw_rates)
            latency = {c: percentiles(load(c, args.requests, CONFIGS[:1])[1]) for c in (8, 32)}
            # 1 caller, sporadic: one raw forward, then one served request of the same tile, 50 ms idle before each,
            # so every process meets each request cold. Forward times drift by several ms within a minute here, so
            # the added latency is the median of each served request minus the raw forward just before it, not the
            # difference of two medians taken over the whole run.
            # Each served request's own run in the worker (stacking + forward, from its inference histogram) is
            # read between requests: served minus that is the engine's share with no forward noise in it.
            solo, raw_solo, worker_runs = [], [], []
            for _ in range(args.solo_pairs):
                time.sleep(0.05)
                raw_solo.append(_timed(lambda: session.run(None, one_feed)))
                ran_before = _histogram(metrics_dir, "anysat_inference_seconds")[0]
                time.sleep(0.05)
                solo.append(call(queue, CONFIGS[0], fixed))
                worker_runs.append(_histogram(metrics_dir, "anysat_inference_seconds")[0] - ran_before)
            raw_one = statistics.median(raw_solo)
            added = statistics.median(np.subtract(solo, raw_solo))
            added_own = statistics.median(np.subtract(solo, worker_runs))
            # 1 caller, back to back: blocks of raw forwards alternating with blocks of served requests, each
            # request sent when the previous answer arrives; the added latency is the median over block pairs of
            # (served median - raw median).
            # The worker's own runs are summed over each served block (read after its untimed first call).
            blocks, raw_spinning, own_b2b, ran = [], [], [], []
            for _ in range(args.solo_pairs // BLOCK):
                raw = block(lambda: session.run(None, one_feed))
                served = block(lambda: call(queue, CONFIGS[0], fixed),
                               lambda: ran.append(_histogram(metrics_dir, "anysat_inference_seconds")[0]))
                own_b2b.append(statistics.mean(served) - (_histogram(metrics_dir, "anysat_inference_seconds")[0]
                                                          - ran.pop()) / BLOCK)
                blocks.append((raw, served))
                raw_spinning += block(lambda: spin_session.run(None, one_feed))
            added_b2b = statistics.median(statistics.median(s) - statistics.median(r) for r, s in blocks)
            raw_b2b = statistics.median(t for r, _ in blocks for t in r)
            served_b2b = [t for _, s in blocks for t in s]
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

        # 6. The engine's own share: the same request and pauses through a worker whose runner does nothing.
        noop = subprocess.Popen([sys.executable, "-m", "service.engine.worker", "--redis-url", url,
                                 "--queue-prefix", "noop", "--runner", "benchmarks.serving:NoopRunner"],
                                env=env, cwd=REPO)
        try:
            noop_queue = RedisQueue.from_url(url, QueueSettings(prefix="noop"))
            # ...and, alternating with it, the same tile queued normalised as float32 (3.6x the bytes)
            as_float32 = {k: v[0] for k, v in one.items() if not k.endswith("_date_mask")}
            call(noop_queue, CONFIGS[0], fixed)
            engine, engine_f32 = [], []
            for _ in range(args.solo_pairs):
                time.sleep(0.05)
                engine.append(call(noop_queue, CONFIGS[0], fixed))
                time.sleep(0.05)
                engine_f32.append(call(noop_queue, CONFIGS[0], as_float32))
            engine_b2b = [t for _ in range(args.solo_pairs // BLOCK)
                          for t in block(lambda: call(noop_queue, CONFIGS[0], fixed))]
        finally:
            noop.terminate()
            noop.wait(timeout=60)

    print(f"\nTreeSatAI configuration, {args.size}, ONNX Runtime CPU, {args.threads} threads, max_batch_size "
          f"{args.batch}, max_wait_ms {args.max_wait_ms:g}, adaptive_wait {'on' if args.adaptive_wait else 'off'}, "
          "one worker process\n")
    print("| measurement | value |")
    print("|---|---|")
    print(f"| raw ONNX Runtime throughput at B={args.batch} | {raw_tput:.2f} tiles/s |")
    print(f"| served throughput at saturation (Redis + worker) | {served_tput:.2f} tiles/s |")
    ratios = ", ".join(f"{a / b:.2f}" for a, b in zip(served_rates, raw_rates, strict=True))
    print(f"| served / raw (median rates; per round: {ratios}) | {served_tput / raw_tput:.2f} |")
    print(f"| raw forward, 1 request | {raw_one * 1000:.1f} ms |")
    for c, (p50, p95, p99) in latency.items():
        print(f"| end-to-end latency, {c} concurrent caller{'s' if c > 1 else ''}: p50 / p95 / p99 | "
              f"{p50:.1f} / {p95:.1f} / {p99:.1f} ms |")
    print(f"| added p50 latency at 1 caller, sporadic (median over {args.solo_pairs} of served - the raw forward just "
          f"before; 50 ms idle before each) | {added * 1000:.1f} ms |")
    print(f"| ... served - the worker's own run of that request (stacking + forward), sporadic | "
          f"{added_own * 1000:.1f} ms |")
    print(f"| raw forward / served p50, 1 caller back to back ({len(blocks)} alternating blocks of {BLOCK}) | "
          f"{raw_b2b * 1000:.1f} / {statistics.median(served_b2b) * 1000:.1f} ms |")
    print(f"| raw forward back to back with ORT's default spinning after run() (the worker stops it) | "
          f"{statistics.median(raw_spinning) * 1000:.1f} ms |")
    print(f"| added p50 latency at 1 caller, back to back (median over block pairs of served - raw medians) | "
          f"{added_b2b * 1000:.1f} ms |")
    print(f"| ... served - the worker's own runs, back to back (median over blocks of the two means) | "
          f"{statistics.median(own_b2b) * 1000:.1f} ms |")
    size = sum(v.nbytes for v in fixed.values()) / 2**20
    size_f32 = sum(v.nbytes for v in as_float32.values()) / 2**20
    print(f"| the engine alone: 1 caller through a worker whose runner answers at once, p50: raw values "
          f"({size:.2f} MB) / normalised float32 ({size_f32:.2f} MB) | {statistics.median(engine) * 1000:.1f} / "
          f"{statistics.median(engine_f32) * 1000:.1f} ms |")
    print(f"| the engine alone, 1 caller back to back, p50 / p90 (raw values) | "
          f"{statistics.median(engine_b2b) * 1000:.1f} / {np.percentile(engine_b2b, 90) * 1000:.1f} ms |")
    print(f"| the worker's own run of a request (stacking + forward; inference histogram), 1 caller sporadic, p50 | "
          f"{statistics.median(worker_runs) * 1000:.1f} ms |")
    print(f"| mean batch size, 3 interleaved configurations, 32 callers | {mean_batch:.2f} "
          f"({mean_batch / args.batch:.2f} x max_batch_size) |")
    print(f"| throughput, 3 interleaved configurations | {mixed_tput:.2f} tiles/s |")
    print(f"| worker RSS before / after | {mem_before[0]:.0f} / {mem_after[0]:.0f} MB |")
    print(f"| Redis used memory before / after | {mem_before[1]:.1f} / {mem_after[1]:.1f} MB |")
    print(f"| Redis keys before / after (done-markers expire after result_ttl_s) | {mem_before[2]} / {mem_after[2]} |")
    return 0


class NoopRunner:
    """``--runner benchmarks.serving:NoopRunner``: answers at once, so only the engine's own work is timed."""

    def run(self, batch_key: str, requests: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        return [{"embedding": np.zeros(256, np.float32)} for _ in requests]


def block(fn, warmed=None) -> list[float]:  # type: ignore[no-untyped-def]
    """``BLOCK`` timed calls of ``fn`` back to back, after 50 ms idle and one untimed call (then ``warmed()``)."""
    time.sleep(0.05)
    fn()
    if warmed is not None:
        warmed()
    return [_timed(fn) for _ in range(BLOCK)]


def _timed(fn) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _histogram(directory: Path, name: str) -> tuple[float, float]:
    """(sum, count) of one of the worker's histograms, summed over processes."""
    from service.engine.metrics import multiprocess_registry

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
