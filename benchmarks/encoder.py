"""Encoder benchmark: forward time, throughput and peak memory on the TreeSatAI configuration
(aerial 300 px + s2 146 dates + s1-asc 60 dates, 60 m tile, patch size 20 m), eager PyTorch vs
ONNX Runtime, fp32 vs reduced precision, with achieved GFLOP/s beside the machine's measured
matrix-multiply peak (large fp32 and bf16 ``matmul`` timed in the same run).

    anysat benchmark                                   # tiny + base, batch 1 and 16, 2 threads
    anysat benchmark --sizes tiny --batches 1 4 --repeats 5

Each measurement runs in its own process, so "peak MB" is that process's peak resident memory
(model, runtime and activations) and nothing leaks between rows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.proc import status_mb

REPO = Path(__file__).resolve().parents[1]
TILE = REPO / "examples" / "data" / "treesatai-ts" / "Abies_alba_1_1005_WEFL_NLF"
RUNTIMES = ("eager-fp32", "eager-bf16", "onnx-fp32", "onnx-int8")


def treesat_batch(batch: int) -> dict[str, torch.Tensor]:
    sys.path.insert(0, str(REPO / "examples"))
    from treesatai_embeddings import load_tile

    return {k: v.expand(batch, *v.shape[1:]).contiguous() for k, v in load_tile(TILE).items()}


def matmul_peak(dtype: torch.dtype, n: int = 2048, seconds: float = 1.0, trials: int = 3) -> float:
    """Achieved GFLOP/s of a large square matmul, best of ``trials``: the practical ceiling for
    this encoder. Shared machines drift, so every row also measures it around its own timing."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = 0.0
    for _ in range(trials):
        calls, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds or calls < 2:
            a @ b
            calls += 1
        best = max(best, 2 * n**3 * calls / elapsed / 1e9)
    return best


def flops_per_tile(size: str, patch_size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    from model import create_model

    model = create_model(size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(treesat_batch(1), patch_size=patch_size)
    return counter.get_total_flops()


def _time(fn, repeats: int) -> float:
    fn()  # warm-up: allocator, kernels, caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _child(args: argparse.Namespace) -> None:
    """One (size, batch, runtime) measurement; prints a JSON line."""
    torch.set_num_threads(args.threads)
    from model import create_model
    from model.export import input_names, with_date_masks

    data = with_date_masks(treesat_batch(args.batch))
    if args.runtime.startswith("eager"):
        torch.manual_seed(0)  # same weights as the exported graphs
        model = create_model(args.size)

        def run() -> np.ndarray:
            with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=args.runtime == "eager-bf16"):
                return model(data, patch_size=args.patch_size).float().numpy()
    else:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = args.threads, 1
        session = ort.InferenceSession(args.onnx, opts, providers=["CPUExecutionProvider"])
        feed = {n: data[n].numpy() for n in input_names(data)}

        def run() -> np.ndarray:
            return session.run(None, feed)[0]

    loaded_mb = status_mb("VmRSS")
    # The machine's speed drifts by tens of percent between minutes, so each row is compared with
    # a peak measured right around it, in the same process and threads (the higher of the two).
    peak_before = matmul_peak(torch.float32, trials=2)
    seconds = _time(run, args.repeats)
    peak_after = matmul_peak(torch.float32, trials=2)
    out = run()
    np.save(args.out_npy, out)
    print(json.dumps({"seconds": seconds, "peak_mb": status_mb("VmHWM"), "loaded_mb": loaded_mb,
                      "row_peak_gflops": max(peak_before, peak_after)}))


def _export(size: str, patch_size: int, workdir: Path) -> dict[str, str]:
    """fp32 ONNX (dynamic batch) and its int8 dynamic-quantised twin for one size."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from model import create_model
    from model.export import export_onnx

    torch.manual_seed(0)
    fp32 = workdir / f"{size}.onnx"
    export_onnx(create_model(size), treesat_batch(1), fp32, patch_size=patch_size)
    int8 = workdir / f"{size}.int8.onnx"
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    return {"onnx-fp32": str(fp32), "onnx-int8": str(int8)}


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return float(np.min((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="anysat benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "base"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=RUNTIMES)
    parser.add_argument("--patch-size", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--force-bf16", action="store_true", help="run eager-bf16 even without native bf16")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--size", "--batch", "--runtime", "--onnx", "--out-npy"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._child:
        args.batch = int(args.batch)
        _child(args)
        return 0

    torch.set_num_threads(args.threads)
    peak32, peak16 = matmul_peak(torch.float32), matmul_peak(torch.bfloat16, n=1024, trials=1)
    print(f"# {args.threads} threads, torch {torch.__version__}; matmul peak: fp32 {peak32:.1f} GFLOP/s, "
          f"bf16 {peak16:.1f} GFLOP/s", flush=True)
    if "eager-bf16" in args.runtimes and peak16 < peak32 and not args.force_bf16:
        # Emulated bf16 runs ~100x slower than fp32 here; a base batch would take many minutes.
        args.runtimes.remove("eager-bf16")
        print("# eager-bf16 skipped: bf16 matmul is slower than fp32 on this machine (no native bf16); "
              "--force-bf16 runs it anyway", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for size in args.sizes:
            gflop = flops_per_tile(size, args.patch_size) / 1e9
            onnx = _export(size, args.patch_size, workdir) if any(r.startswith("onnx") for r in args.runtimes) \
                else {}
            for batch in args.batches:
                ref = None
                for runtime in args.runtimes:
                    out_npy = workdir / f"{size}-{batch}-{runtime}.npy"
                    cmd = [sys.executable, "-m", "benchmarks.encoder", "--_child", "--size", size,
                           "--batch", str(batch), "--runtime", runtime, "--onnx", onnx.get(runtime, ""),
                           "--out-npy", str(out_npy), "--threads", str(args.threads),
                           "--repeats", str(args.repeats), "--patch-size", str(args.patch_size)]
                    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                                          env={**os.environ, "PYTHONPATH": str(REPO)})
                    if proc.returncode:
                        print(f"{size} B={batch} {runtime}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                        continue
                    result = json.loads(proc.stdout.strip().splitlines()[-1])
                    out = np.load(out_npy)
                    ref = out if runtime == "eager-fp32" else ref
                    rate = gflop * batch / result["seconds"]
                    rows.append({"size": size, "batch": batch, "runtime": runtime, "gflop_per_tile": gflop,
                                 "ms_per_tile": 1000 * result["seconds"] / batch, "gflops": rate,
                                 "row_peak_fp32": result["row_peak_gflops"],
                                 "pct_fp32_peak": 100 * rate / result["row_peak_gflops"],
                                 "peak_mb": result["peak_mb"],
                                 "loaded_mb": result["loaded_mb"],
                                 "cosine_vs_fp32": _cosine(out, ref) if ref is not None else float("nan")})
                    r = rows[-1]
                    print(f"{size:5s} B={batch:<3d} {runtime:11s} {r['ms_per_tile']:9.1f} ms/tile "
                          f"{rate:7.1f} GFLOP/s ({r['pct_fp32_peak']:5.1f}% of the {r['row_peak_fp32']:.0f} "
                          f"GFLOP/s fp32 peak around it) "
                          f"peak {r['peak_mb']:7.0f} MB  cos {r['cosine_vs_fp32']:.5f}", flush=True)
    _table(rows, peak32)
    if args.json:
        args.json.write_text(json.dumps({"matmul_peak_fp32": peak32, "matmul_peak_bf16": peak16, "rows": rows},
                                        indent=1))
    return 0


def _table(rows: list[dict], peak32: float) -> None:
    print(f"\nfp32 matmul peak: {peak32:.1f} GFLOP/s at the start; each row's % is of the peak measured "
          "around that row (in its own process, just before and after its timing; the higher)\n")
    print("| size | batch | runtime | GFLOP/tile | ms/tile | GFLOP/s | row's fp32 peak | % of it | speed-up vs "
          "eager-fp32 | peak MB (after load) | min cosine vs fp32 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    base = {(r["size"], r["batch"]): r["ms_per_tile"] for r in rows if r["runtime"] == "eager-fp32"}
    for r in rows:
        speed = base.get((r["size"], r["batch"]), float("nan")) / r["ms_per_tile"]
        print(f"| {r['size']} | {r['batch']} | {r['runtime']} | {r['gflop_per_tile']:.1f} | "
              f"{r['ms_per_tile']:.1f} | {r['gflops']:.1f} | {r['row_peak_fp32']:.0f} | {r['pct_fp32_peak']:.0f}% | "
              f"{speed:.2f}x | "
              f"{r['peak_mb']:.0f} ({r['loaded_mb']:.0f}) | {r['cosine_vs_fp32']:.5f} |")


if __name__ == "__main__":
    raise SystemExit(main())
