"""``python -m benchmarks.scene_service``: one scene job through the service (``anysat serve`` with 2 workers,
the job posted to ``/v1/jobs`` by path) against the same job in one process with one runner (``anysat
predict``'s pipeline), rounds alternating. Both sides run one torch thread per model process
(``OMP_NUM_THREADS=1``), so the ratio shows how a job spreads over the fleet, not how threads share a core.

The scene is ``benchmarks.scene``'s (the Landsat 8 crop + the 5 m RGBN image as s2), at ``--scale`` times
its 1x area. The outputs of the two sides are compared too (same file, within float tolerance)."""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.scene import CHECKPOINT, HEADS, LANDSAT, OVERLAP, TILE, _area, _job, build_s2
from benchmarks.stack import anysat_serve


def _in_process(s2: str, scale: float, batch: int, out: str, q: mp.Queue) -> None:
    import torch

    from service.gateway.scenes import InProcessExecutor, plan_scene, run_scene
    from service.runtime.runner import ModelRunner

    torch.set_num_threads(1)
    runner = ModelRunner.from_checkpoint(CHECKPOINT, heads_dir=HEADS)
    plan = plan_scene(_job(Path(s2), Path(out), scale), checkpoint=CHECKPOINT, heads_dir=HEADS)
    t0 = time.perf_counter()
    result = run_scene(plan, InProcessExecutor(runner), batch_size=batch)
    q.put({"tiles": result.tiles_run, "seconds": time.perf_counter() - t0})


def in_process(s2: Path, scale: float, batch: int, out: Path) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()
    p = ctx.Process(target=_in_process, args=(str(s2), scale, batch, str(out), q))
    p.start()
    got = q.get(timeout=1800)
    p.join(60)
    return got


def through_service(url: str, s2: Path, scale: float, out: Path) -> dict[str, Any]:
    spec = {"sensors": {"l8": [str(LANDSAT)], "s2": [str(s2)]}, "dates": {"l8": "2020-05-18", "s2": "2020-05-20"},
            "bands": {"l8": "B2,B3,B4", "s2": "B4,B3,B2,B8"}, "output": "patch", "tile_size": TILE,
            "overlap": OVERLAP, "bbox": list(_area(scale))}
    t0 = time.perf_counter()
    r = httpx.post(f"{url}/v1/jobs", json=spec, timeout=60)
    r.raise_for_status()
    job_id = r.json()["id"]
    while True:
        job = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=10).json()
        if job["state"] not in ("queued", "running"):
            break
        time.sleep(0.05)
    seconds = time.perf_counter() - t0
    if job["state"] != "done":
        raise RuntimeError(f"job {job_id} ended {job['state']}: {job.get('error')}")
    out.write_bytes(httpx.get(f"{url}/v1/jobs/{job_id}/result", timeout=60).content)
    return {"tiles": job["tiles_run"], "seconds": seconds}


def _read(path: Path) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as src:
        return src.read()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.scene_service", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=4.0, help="the scene's area, times the 1x area")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8, help="tiles per model call (in-process) / per job submit")
    ap.add_argument("--json", type=Path, help="write the raw numbers here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="anysat-scene-svc-") as tmp:
        work = Path(tmp)
        s2 = build_s2(work / "s2_20200520.tif", args.scale)
        env = {"ANYSAT_WORKERS": str(args.workers), "ANYSAT_RUNTIME": "eager", "OMP_NUM_THREADS": "1",
               "ANYSAT_JOB_ROOTS": f"{LANDSAT.parent},{work}", "ANYSAT_JOBS_DIR": str(work / "jobs"),
               # A job spreads over the fleet when each worker holds one batch at a time (prefetch = batch) and a
               # job keeps two batches per worker on the queue, so none waits while the gateway writes (docs/jobs.md).
               "ANYSAT_MAX_BATCH_SIZE": str(args.batch), "ANYSAT_PREFETCH": str(args.batch),
               "ANYSAT_JOB_BATCH_SIZE": str(2 * args.workers * args.batch), "ANYSAT_JOB_POLL_S": "0.05",
               "ANYSAT_CHECKPOINT": str(CHECKPOINT), "ANYSAT_HEADS_DIR": str(HEADS)}
        rows: list[dict[str, Any]] = []
        with anysat_serve(env) as served:
            for i in range(args.rounds):
                local = in_process(s2, args.scale, args.batch, work / f"local{i}.tif")
                svc = through_service(served.url, s2, args.scale, work / f"svc{i}.tif")
                rows.append({"in_process": local, "service": svc,
                             "ratio": local["seconds"] / svc["seconds"]})
                print(f"round {i + 1}: in-process 1 runner {local['tiles'] / local['seconds']:.2f} tiles/s, "
                      f"service {args.workers} workers {svc['tiles'] / svc['seconds']:.2f} tiles/s", flush=True)
        diff = float(np.abs(_read(work / "local0.tif").astype(np.float64) - _read(work / "svc0.tif")).max())
    ratio = statistics.median(r["ratio"] for r in rows)
    print()
    print(f"| scene ({args.scale:g}x, {rows[0]['service']['tiles']} tiles) | tiles/s ratio | max abs diff |")
    print("|---|---|---|")
    print(f"| service, {args.workers} workers ÷ in-process, 1 runner (median of {args.rounds} rounds) | "
          f"{ratio:.2f} | {diff:.1e} |")
    if args.json:
        args.json.write_text(json.dumps({"rounds": rows, "ratio": ratio, "max_abs_diff": diff,
                                         "scale": args.scale, "workers": args.workers}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
