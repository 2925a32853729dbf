"""Where an ONNX Runtime forward of the TreeSatAI configuration spends its time, by operator type, and how fast
its matrix multiplications run against the machine's matmul peak measured in the same process.

    python -m benchmarks.profile_onnx                       # base, batch 1, 2 threads
    python -m benchmarks.profile_onnx --size tiny --batch 4

This is what bounds the encoder benchmark's "% of peak": if the matmuls already run at the peak, the rest of the
time (normalisations, activations, attention softmax, reshapes) is what keeps a forward below it.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.encoder import matmul_peak, treesat_batch

GEMMS = ("MatMul", "Gemm", "FusedMatMul")


def _shape(entry: dict) -> list[int]:
    return next(iter(entry.values()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.profile_onnx", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="base")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--patch-size", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3, help="profiled runs after one warm-up")
    args = parser.parse_args(argv)

    import onnxruntime as ort

    from model import create_model
    from model.export import export_onnx, input_names, with_date_masks

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        torch.manual_seed(0)
        export_onnx(create_model(args.size), treesat_batch(1), path, patch_size=args.patch_size)
        data = with_date_masks(treesat_batch(args.batch))
        feed = {n: data[n].numpy() for n in input_names(data)}
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = args.threads, 1
        opts.enable_profiling, opts.profile_file_prefix = True, str(Path(tmp) / "profile")
        opts.log_severity_level = 3
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        session.run(None, feed)
        peak = matmul_peak(torch.float32, trials=2)
        started = time.perf_counter()
        for _ in range(args.runs):
            session.run(None, feed)
        seconds = (time.perf_counter() - started) / args.runs
        peak = max(peak, matmul_peak(torch.float32, trials=2))
        events = json.loads(Path(session.end_profiling()).read_text())

    # Kernel events of the timed runs only: those that start after the warm-up's "model_run" event ends.
    warm_up = min((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    timed_from = warm_up["ts"] + warm_up["dur"]
    time_us: collections.Counter[str] = collections.Counter()
    gemm_flop = 0.0
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time") or e["ts"] < timed_from:
            continue
        op = e["args"]["op_name"]
        time_us[op] += e["dur"]
        if op in GEMMS:  # 2·M·N·K from the output shape and the first input's inner dimension
            out, first = _shape(e["args"]["output_type_shape"][0]), _shape(e["args"]["input_type_shape"][0])
            gemm_flop += 2 * math.prod(out) * first[-1]
    total = sum(time_us.values())
    gemm_us = sum(time_us[op] for op in GEMMS)
    print(f"# {args.size}, batch {args.batch}, {args.threads} threads: {seconds * 1000:.1f} ms per forward; "
          f"fp32 matmul peak around it {peak:.1f} GFLOP/s\n")
    print("| operator | share of kernel time | ms per forward |")
    print("|---|---|---|")
    for op, us in time_us.most_common(12):
        print(f"| {op} | {100 * us / total:.1f}% | {us / args.runs / 1000:.1f} |")
    rate = gemm_flop / (gemm_us * 1e-6) / 1e9
    share, speed = gemm_us / total, rate / peak  # share of the time in matmuls, their speed as a fraction of peak
    print(f"\nmatrix multiplications: {100 * share:.1f}% of kernel time at {rate:.1f} GFLOP/s "
          f"({100 * speed:.0f}% of the peak); everything else: {100 * (1 - share):.1f}%")
    # The forward reaches about share·speed of the peak; with the matmuls at exactly the peak and the rest unchanged
    # it would reach share·speed / (share·speed + 1 - share).
    print(f"with the matmuls at exactly the peak and the rest unchanged, a forward would reach "
          f"{100 * share * speed / (share * speed + 1 - share):.0f}% of the peak")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
