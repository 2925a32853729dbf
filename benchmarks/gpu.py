"""GPU benchmark: the TreeSatAI configuration (aerial 300 px + s2 + s1-asc, patch 20 m, tile output) at the tiny
and base sizes, on one NVIDIA GPU, every way a worker can run it; then the serving stack with a GPU worker.

    bash benchmarks/gpu.sh                              # on a machine with an NVIDIA GPU: installs .[gpu], runs this
    python -m benchmarks.gpu                            # the same, in an environment that has them
    python -m benchmarks.gpu --device cpu --quick       # the script's own check, on the CPU (tests/test_gpu_bench.py)

Rows (each: tiles/s and p50/p95 latency at batch 1, 2, 4, ... 256, GPU memory, cosine to eager fp32):
eager fp32, eager bf16 and fp16 (``torch.autocast``), ONNX Runtime fp32 and fp16 graphs (``anysat export
--precision fp16``'s) with and without IO binding, TensorRT when ONNX Runtime has its provider (``--tensorrt``:
its engine build takes minutes). Every row starts from host numpy arrays and ends with host numpy arrays, as a
worker's forward does (copies in, compute, copy out). Inputs are ``model.export.smooth_inputs``: shaped like real
normalised imagery, ``--dates`` dates per series. Weights are random (seeded): speed does not depend on them.

Then the serving benchmark: one ``anysat worker`` process on the GPU (ONNX fp16 when ONNX Runtime has CUDA, else
eager) behind an embedded Redis, at saturation, in rounds alternating with the same runner's raw forward at the
same batch (``served / raw``; the target is >= 0.9).

Results go to ``<out>/gpu.json`` (``--out``, else ``$OUT``, else ``benchmarks/results-gpu``) and a table on
stdout. A time budget (``--budget-s``, default 420 s) skips rows (recorded as skipped) so the whole run, the
install in gpu.sh included, stays under 8 minutes. Without a GPU, ``--device cuda`` exits 2 at once, saying so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SIZES = ("tiny", "base")
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
EXIT_NO_GPU = 2
Feed = dict[str, np.ndarray]


def treesat_config() -> Any:
    from service.runtime.configuration import ModalityConfig

    return ModalityConfig((("aerial", 300), ("s2", 6), ("s1-asc", 6)), patch_size=20, output="tile")


def environment(device: str) -> dict[str, Any]:
    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__, "device": device,
                           "torch_cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        env["cuda"] = torch.version.cuda
    try:
        import onnxruntime as ort
    except ImportError as exc:
        env["onnxruntime"] = f"not installed ({exc})"
        env["providers"] = []
    else:
        env["onnxruntime"] = ort.__version__
        env["providers"] = ort.get_available_providers()
    return env


def no_gpu_reason(device: str) -> str | None:
    """Why ``device`` cannot be benchmarked here, or None."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        return (f"no CUDA GPU: torch {torch.__version__} sees none (is this a machine with an NVIDIA GPU and driver, "
                "and a CUDA build of torch?). Run it there (bash benchmarks/gpu.sh), or --device cpu --quick to "
                "check the script itself")
    return None


def make_feed(config: Any, batch: int, dates: int, seed: int = 0) -> Feed:
    from model.export import smooth_inputs

    return {k: v.numpy() for k, v in smooth_inputs(config.modalities, batch, dates, seed).items()}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def eager_run(model: torch.nn.Module, config: Any, device: str, dtype: torch.dtype | None) -> Callable[[Feed], Any]:
    kind = "cuda" if device.startswith("cuda") else "cpu"

    def run(feed: Feed) -> np.ndarray:
        data = {k: (torch.from_numpy(v).pin_memory().to(device, non_blocking=True) if kind == "cuda"
                    else torch.from_numpy(v)) for k, v in feed.items()}
        with torch.no_grad(), torch.autocast(kind, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model(data, patch_size=config.patch_size, output=config.output)
        return out.float().cpu().numpy()

    return run


def ort_run(path: Path, names: list[str], device: str, binding: bool, tensorrt: bool = False
            ) -> Callable[[Feed], Any]:
    import onnxruntime as ort

    from service.runtime.device import CudaOptions, Device, bound_run, device_providers
    from service.runtime.runner import session_options

    target = Device.parse(device)
    chosen = device_providers(target, CudaOptions(tensorrt=tensorrt))
    if tensorrt and chosen[0][0] != "TensorrtExecutionProvider":
        raise RuntimeError("TensorrtExecutionProvider not available in this ONNX Runtime")
    session = ort.InferenceSession(str(path), session_options(), providers=[p for p, _ in chosen],
                                   provider_options=[o for _, o in chosen])
    if session.get_providers()[0] != chosen[0][0]:
        raise RuntimeError(f"session fell back to {session.get_providers()}")
    if binding:
        run = bound_run(session, names, target)
        return lambda feed: run(feed)
    return lambda feed: session.run(None, {n: feed[n] for n in names})[0]


def gpu_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        free, total = torch.cuda.mem_get_info()
        return round((total - free) / 2**20, 1)
    from benchmarks.proc import status_mb

    return round(status_mb("VmRSS", os.getpid()), 1)


def time_row(run: Callable[[Feed], Any], feed: Feed, device: str, min_s: float, min_runs: int = 3,
             warmups: int = 2) -> list[float]:
    for _ in range(warmups):  # the shape's first runs (allocations, kernel choice) are not what serving sees
        run(feed)
    times: list[float] = []
    started = time.perf_counter()
    while (time.perf_counter() - started < min_s or len(times) < min_runs) and len(times) < 200:
        t0 = time.perf_counter()
        run(feed)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def cosine_min(a: np.ndarray, b: np.ndarray) -> float:
    from model.export import cosine_rows

    return float(cosine_rows(a, b).min())


class Budget:
    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


def bench_size(size: str, args: argparse.Namespace, work: Path, budget: Budget, env: dict[str, Any]
               ) -> dict[str, Any]:
    from model import create_model, save_checkpoint
    from model.checkpoint import file_sha256
    from service.runtime.export import ExportCache

    config = treesat_config()
    torch.manual_seed(0)
    ckpt = save_checkpoint(create_model(size), work / f"{size}.safetensors")
    model = create_model(checkpoint=ckpt).eval()
    cache = ExportCache(work / "exports", model, file_sha256(ckpt))
    started = time.perf_counter()
    fp32 = cache.get(config)[0]
    fp16 = cache.get(config, "fp16")[0]
    out: dict[str, Any] = {"size": size, "checkpoint": str(ckpt), "export_s": round(time.perf_counter() - started, 1),
                           "fp16_manifest_cosine_vs_fp32": fp16.manifest["cosine_vs_fp32"], "rows": []}
    names = [i["name"] for i in fp32.manifest["inputs"]]
    model.to(args.device)
    has_cuda_ort = "CUDAExecutionProvider" in env["providers"]
    on_gpu = args.device.startswith("cuda")
    modes: list[tuple[str, Callable[[], Callable[[Feed], Any]] | str]] = [
        ("eager-fp32", lambda: eager_run(model, config, args.device, None)),
        ("eager-bf16", lambda: eager_run(model, config, args.device, torch.bfloat16)),
        ("eager-fp16", lambda: eager_run(model, config, args.device, torch.float16)),
    ]
    ort_missing = ("skipped: ONNX Runtime has no CUDAExecutionProvider (install .[gpu], without the CPU "
                   "onnxruntime beside it)") if on_gpu and not has_cuda_ort else None
    if "providers" in env and not env["providers"]:
        ort_missing = "skipped: ONNX Runtime is not installed"
    for precision, export in (("fp32", fp32), ("fp16", fp16)):
        for binding in (False, True):
            name = f"ort-{precision}{'-iobinding' if binding else ''}"
            path = export.directory / "model.onnx"
            modes.append((name, ort_missing or (lambda p=path, b=binding: ort_run(p, names, args.device, b))))
    if args.tensorrt:
        modes.append(("ort-tensorrt-fp16", ort_missing or (
            lambda: ort_run(fp16.directory / "model.onnx", names, args.device, True, tensorrt=True))))

    check_feed = make_feed(config, 8, args.dates, seed=5)
    reference = eager_run(model, config, args.device, None)(check_feed)
    for mode, make in modes:
        if isinstance(make, str):
            out["rows"].append({"mode": mode, "skipped": make})
            continue
        if budget.left() < 5:
            out["rows"].append({"mode": mode, "skipped": "time budget spent"})
            continue
        try:
            run = make()
            cosine = cosine_min(run(check_feed), reference)
        except Exception as exc:  # a mode this machine cannot run (no bf16, no TensorRT): recorded, not fatal
            out["rows"].append({"mode": mode, "error": f"{type(exc).__name__}: {exc}"})
            continue
        for batch in args.batches:
            if budget.left() < 5:
                out["rows"].append({"mode": mode, "batch": batch, "skipped": "time budget spent"})
                continue
            feed = make_feed(config, batch, args.dates, seed=batch)
            if on_gpu:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            try:
                times = time_row(run, feed, args.device, args.min_s, args.min_runs, args.warmups)
            except Exception as exc:  # out of memory at this batch: larger ones would be too
                out["rows"].append({"mode": mode, "batch": batch, "error": f"{type(exc).__name__}: {exc}"[:300]})
                break
            p50 = statistics.median(times)
            row = {"mode": mode, "batch": batch, "tiles_per_s": round(batch / p50, 1),
                   "p50_ms": round(1000 * p50, 3), "p95_ms": round(1000 * float(np.percentile(times, 95)), 3),
                   "runs": len(times), "memory_mb": gpu_memory_mb(args.device), "cosine_vs_eager_fp32": cosine}
            if on_gpu and mode.startswith("eager"):
                row["torch_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
            out["rows"].append(row)
            print(f"{size:5s} {mode:20s} B={batch:<4d} {row['tiles_per_s']:>10.1f} tiles/s  p50 {row['p50_ms']:.2f} ms"
                  f"  mem {row['memory_mb']:.0f} MB  cos {cosine:.6f}", flush=True)
        del run
    model.to("cpu")
    return out


def bench_serving(size_result: dict[str, Any], args: argparse.Namespace, work: Path, budget: Budget,
                  env: dict[str, Any]) -> dict[str, Any]:
    """One GPU worker through Redis at saturation vs the same runner's raw forward, rounds alternating."""
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    from model import create_model
    from model.checkpoint import file_sha256
    from service.engine.queue import RedisQueue
    from service.engine.redis_server import EmbeddedRedis
    from service.engine.settings import QueueSettings
    from service.runtime.device import Device
    from service.runtime.export import ExportCache
    from service.runtime.runner import EagerBackend, ExportedBackend, ModelRunner

    config, batch = treesat_config(), args.serving_batch
    on_gpu = args.device.startswith("cuda")
    use_onnx = not on_gpu or "CUDAExecutionProvider" in env["providers"]
    runtime, precision = ("onnx", "fp16") if use_onnx else ("eager", "fp32")
    ckpt = Path(size_result["checkpoint"])
    model = create_model(checkpoint=ckpt)
    target = Device.parse(args.device)
    cache = ExportCache(work / "exports", model, file_sha256(ckpt))
    backend = (ExportedBackend(cache, "onnx", device=target, precision=precision) if use_onnx
               else EagerBackend(model, target))
    raw = ModelRunner(model, backend, device=target)
    rng = np.random.default_rng(0)
    pool_requests = [_request(config, rng, args.dates) for _ in range(max(2 * batch, 16))]
    raw.run(config.key(), pool_requests[:batch])

    def raw_rate(seconds: float) -> float:
        n, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds or n < 3:
            raw.run(config.key(), pool_requests[:batch])
            n += 1
        return n * batch / (time.perf_counter() - started)

    result: dict[str, Any] = {"size": size_result["size"], "runtime": runtime, "precision": precision,
                              "batch": batch, "device": args.device}
    with EmbeddedRedis() as url:
        env_vars = {**os.environ, "ANYSAT_CHECKPOINT": str(ckpt), "ANYSAT_RUNTIME": runtime,
                    "ANYSAT_PRECISION": precision, "ANYSAT_DEVICE": args.device,
                    "ANYSAT_EXPORT_DIR": str(work / "exports"), "PYTHONPATH": str(REPO)}
        worker = subprocess.Popen([sys.executable, "-m", "service.runtime.worker", "--redis-url", url,
                                   "--max-batch-size", str(batch), "--max-wait-ms", "5"], env=env_vars, cwd=REPO)
        queue = RedisQueue.from_url(url, QueueSettings())
        try:
            queue.wait_result(queue.enqueue(config.key(), pool_requests[0], deadline_s=300), 300)

            def call(i: int) -> float:
                t0 = time.perf_counter()
                queue.wait_result(queue.enqueue(config.key(), pool_requests[i % len(pool_requests)],
                                                deadline_s=300), 300)
                return time.perf_counter() - t0

            def served_rate(n: int) -> tuple[float, list[float]]:
                t0 = time.perf_counter()
                with ThreadPoolExecutor(min(4 * batch, 256)) as pool:
                    latencies = list(pool.map(call, range(n)))
                return n / (time.perf_counter() - t0), latencies

            served, raws, latencies = [], [], []
            for _ in range(args.serving_rounds):
                if budget.left() < 10:
                    result["note"] = "rounds cut short by the time budget"
                    break
                t0 = time.perf_counter()
                rate, lat = served_rate(args.serving_requests)
                served.append(rate)
                latencies += lat
                raws.append(raw_rate(time.perf_counter() - t0))
            if served:
                result.update({
                    "served_tiles_per_s": round(statistics.median(served), 1),
                    "raw_tiles_per_s": round(statistics.median(raws), 1),
                    "served_over_raw": round(statistics.median(served) / statistics.median(raws), 3),
                    "served_p50_ms": round(1000 * statistics.median(latencies), 2),
                    "rounds": len(served)})
        finally:
            worker.terminate()
            worker.wait(timeout=60)
    return result


def _request(config: Any, rng: np.random.Generator, dates: int) -> dict[str, np.ndarray]:
    """The real TreeSatAI tile as the gateway queues it (``benchmarks.serving.make_request``) where rasterio is
    installed; else one of ``smooth_inputs`` (already normalised, no statistics)."""
    try:
        from benchmarks.serving import make_request

        return make_request(config, rng)
    except ImportError:
        feed = make_feed(config, 1, dates, seed=int(rng.integers(1 << 30)))
        return {k: v[0] for k, v in feed.items() if not k.endswith("_date_mask")}


def table(result: dict[str, Any]) -> str:
    lines = ["| size | mode | batch | tiles/s | p50 ms | p95 ms | memory MB | cosine vs fp32 |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for size in result["sizes"]:
        for r in size["rows"]:
            if "tiles_per_s" in r:
                lines.append(f"| {size['size']} | {r['mode']} | {r['batch']} | {r['tiles_per_s']:,.1f} | "
                             f"{r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['memory_mb']:,.0f} | "
                             f"{r['cosine_vs_eager_fp32']:.6f} |")
            else:
                lines.append(f"| {size['size']} | {r['mode']} | {r.get('batch', '')} | "
                             f"{r.get('skipped') or r.get('error')} | | | | |")
    for s in result.get("serving", []):
        if "served_tiles_per_s" in s:
            lines.append(f"\nserving ({s['size']}, {s['runtime']} {s['precision']}, B={s['batch']}): "
                         f"{s['served_tiles_per_s']:,.0f} tiles/s served vs {s['raw_tiles_per_s']:,.0f} raw "
                         f"= {s['served_over_raw']:.2f} x; p50 {s['served_p50_ms']} ms")
        else:
            lines.append(f"\nserving: {s}")
    return "\n".join(lines)


def output_dir(given: Path | None) -> Path:
    return given or Path(os.environ.get("OUT") or REPO / "benchmarks" / "results-gpu")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (with --quick: the script's check)")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES))
    parser.add_argument("--batches", nargs="+", type=int, default=list(BATCHES))
    parser.add_argument("--dates", type=int, default=40, help="dates per series (served requests have 20-59)")
    parser.add_argument("--min-s", type=float, default=0.3, help="seconds timed per row (at least 3 runs)")
    parser.add_argument("--min-runs", type=int, default=3)
    parser.add_argument("--warmups", type=int, default=2)
    parser.add_argument("--tensorrt", action="store_true", help="also TensorRT (fp16), when ONNX Runtime has it")
    parser.add_argument("--serving", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--serving-size", default="base")
    parser.add_argument("--serving-batch", type=int, default=64)
    parser.add_argument("--serving-requests", type=int, default=1024)
    parser.add_argument("--serving-rounds", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=420.0, help="rows past this are skipped (recorded)")
    parser.add_argument("--quick", action="store_true", help="tiny, batches 1 2, 6 dates, one run per row, a short "
                        "serving part: checks the script, measures nothing")
    parser.add_argument("--out", type=Path, default=None, help="folder for gpu.json (default $OUT or "
                        "benchmarks/results-gpu)")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.batches, args.dates, args.min_s, args.min_runs, args.warmups = ["tiny"], [1, 2], 6, 0, 1, 1
        args.serving_size, args.serving_batch, args.serving_requests, args.serving_rounds = "tiny", 2, 4, 1
    out_dir = output_dir(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    budget = Budget(args.budget_s)
    env = environment(args.device)
    result: dict[str, Any] = {"environment": env, "configuration": treesat_config().to_dict(),
                              "dates": args.dates, "args": {k: str(v) for k, v in vars(args).items()},
                              "sizes": [], "serving": []}
    reason = no_gpu_reason(args.device)
    if reason is not None:
        result["error"] = reason
        (out_dir / "gpu.json").write_text(json.dumps(result, indent=1))
        print(f"benchmarks.gpu: {reason}", file=sys.stderr)
        return EXIT_NO_GPU
    print(f"# {json.dumps(env)}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for size in args.sizes:
            result["sizes"].append(bench_size(size, args, work, budget, env))
            (out_dir / "gpu.json").write_text(json.dumps(result, indent=1))  # what was measured survives a kill
        if args.serving:
            done = next((s for s in result["sizes"] if s["size"] == args.serving_size), None)
            if done is None:
                result["serving"].append({"skipped": f"size {args.serving_size} not benchmarked"})
            elif budget.left() < 30:
                result["serving"].append({"skipped": "time budget spent"})
            else:
                try:
                    result["serving"].append(bench_serving(done, args, work, budget, env))
                except ImportError as exc:  # the [serve] extra missing: say which part did not run
                    result["serving"].append({"skipped": f"serving stack not installed: {exc}"})
    result["elapsed_s"] = round(args.budget_s - budget.left(), 1)
    (out_dir / "gpu.json").write_text(json.dumps(result, indent=1))
    print(table(result))
    print(f"# wrote {out_dir / 'gpu.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
