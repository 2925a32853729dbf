"""``python -m benchmarks.scene``: scene inference (``anysat predict``'s pipeline) on synthetic multi-sensor scenes
built from the shipped rasters, at 1x, 4x and 16x the area.

The scene: the Landsat 8 crop (``l8``, B2 B3 B4 at 30 m, EPSG:32621) and the 5 m RGBN image as a one-date
``s2`` (B4 B3 B2 B8), mirrored to cover the largest area and reprojected to EPSG:4326, both read at 10 m on a UTM
grid; patch embeddings of the demo encoder, tiles of 320 m overlapping by 80 m, written as a COG.

- throughput: scene tiles/s ÷ raw runtime tiles/s (``ModelRunner.run`` on the same scene's tiles, prepared
  beforehand, in the same batches), rounds alternating in one process, the median of the rounds' ratios;
- memory: peak RSS (VmHWM) of a fresh process running the whole scene, at each area; 16x ÷ 1x;
- seam: the step between neighbouring patch columns across a tile border ÷ the step at the same ground in a run
  whose tiles do not end there (1 = no seam), blended at a quarter and at half a tile of overlap, and hard cut.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LANDSAT = REPO / "examples" / "data" / "landsat8" / "LC08_224078_20200518_crop512.tif"
RGBN = REPO / "examples" / "data" / "rgbn-5m" / "rgbn.tif"
RGBN_SHARED = Path("/work/shared/data/rgbn-5m/rgbn.tif")
CHECKPOINT = REPO / "artifacts" / "demo" / "encoder.safetensors"
HEADS = REPO / "artifacts" / "demo" / "heads"
TILE, OVERLAP, BASE = 320.0, 80.0, 800.0  # 1x: 800 m square = 3 x 3 tiles


def _area(scale: float) -> tuple[float, float, float, float]:
    import rasterio

    with rasterio.open(LANDSAT) as src:
        left, top = src.bounds.left + 600, src.bounds.top - 600
    side = BASE * scale**0.5
    return left, top - side, left + side, top


def build_s2(out: Path, max_scale: float) -> Path:
    """The RGBN image mirrored to cover the largest area, placed at the Landsat crop, written in EPSG:4326."""
    import rasterio
    from affine import Affine
    from rasterio.crs import CRS
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    path = RGBN if RGBN.is_file() else RGBN_SHARED
    with rasterio.open(path) as src:
        img = src.read()
    left, bottom, right, top = _area(max_scale)
    left, bottom, right, top = left - 200, bottom - 200, right + 200, top + 200
    need_h, need_w = int((top - bottom) / 5) + 1, int((right - left) / 5) + 1
    rows = [img, img[:, ::-1]]
    col = np.concatenate([rows[i % 2] for i in range(need_h // img.shape[1] + 1)], axis=1)[:, :need_h]
    cols = [col, col[:, :, ::-1]]
    mosaic = np.concatenate([cols[i % 2] for i in range(need_w // img.shape[2] + 1)], axis=2)[:, :, :need_w]
    utm, wgs = CRS.from_epsg(32621), CRS.from_epsg(4326)
    src_tf = Affine(5, 0, left, 0, -5, top)
    tf, w, h = calculate_default_transform(utm, wgs, need_w, need_h, left, bottom, left + 5 * need_w, top)
    dst = np.zeros((4, h, w), np.uint8)
    reproject(mosaic, dst, src_transform=src_tf, src_crs=utm, dst_transform=tf, dst_crs=wgs,
              resampling=Resampling.nearest)
    with rasterio.open(out, "w", driver="GTiff", width=w, height=h, count=4, dtype="uint8", crs=wgs, transform=tf,
                       tiled=True, compress="deflate") as f:
        f.write(dst)
    return out


def _job(s2: Path, out: Path, scale: float, **kw: Any) -> Any:
    from scene.sources import parse_sources
    from service.gateway.scenes.job import SceneJob

    sources = parse_sources({"l8": str(LANDSAT), "s2": str(s2)}, {"l8": "2020-05-18", "s2": "2020-05-20"},
                            {"l8": "B2,B3,B4", "s2": "B4,B3,B2,B8"})
    kw = {"output": "patch", "tile_size_m": TILE, "overlap_m": OVERLAP, "bbox": _area(scale), **kw}
    return SceneJob(sources, out, **kw)


def _runner() -> Any:
    import torch

    from service.runtime.runner import ModelRunner

    torch.set_num_threads(2)
    return ModelRunner.from_checkpoint(CHECKPOINT, heads_dir=HEADS)


def _scene_once(runner: Any, job: Any, batch: int) -> tuple[int, float]:
    from service.gateway.scenes import InProcessExecutor, plan_scene, run_scene

    plan = plan_scene(job, checkpoint=CHECKPOINT, heads_dir=HEADS)
    t0 = time.perf_counter()
    result = run_scene(plan, InProcessExecutor(runner), batch_size=batch)
    return result.tiles_run, time.perf_counter() - t0


def _prepared(job: Any, n: int) -> list[Any]:
    from scene.layers import SceneReader
    from service.gateway.prepare import prepare_tile
    from service.gateway.scenes.plan import plan_scene
    from service.gateway.scenes.tiles import tile_input

    plan = plan_scene(job, checkpoint=CHECKPOINT, heads_dir=HEADS)
    out = []
    with SceneReader(plan.job.sources, plan.grid) as reader:
        for tile in list(plan.grid.tiles())[:n]:
            got = tile_input(plan, reader.read(tile))
            assert got is not None
            out.append(prepare_tile(got[0], plan.query, plan.settings, tile.id))
    return out


def _raw(runner: Any, prepared: list[Any], batch: int) -> float:
    """Seconds for the prepared tiles through ``runner.run`` in the scene's batches (same tiles, same sizes)."""
    key = prepared[0].config.key()
    t0 = time.perf_counter()
    for i in range(0, len(prepared), batch):
        runner.run(key, [p.tensors for p in prepared[i:i + batch]])
    return time.perf_counter() - t0


def child_memory(s2: str, scale: float, batch: int, work: str, q: mp.Queue) -> None:
    from benchmarks.proc import status_mb

    runner = _runner()
    job = _job(Path(s2), Path(work) / f"mem{scale:g}.tif", scale)
    warm = _prepared(job, batch)
    _raw(runner, warm, batch)  # the first forward pays for lazy initialisation; not part of the scene's time
    del warm
    tiles, seconds = _scene_once(runner, job, batch)
    q.put({"scale": scale, "tiles": tiles, "seconds": seconds, "hwm_mb": status_mb("VmHWM")})


def _steps(a: np.ndarray) -> np.ndarray:
    return np.concatenate([[0.0], np.linalg.norm(np.diff(a, axis=2), axis=0).mean(axis=0)])


def seam(runner: Any, work: Path, overlap_m: int) -> float:
    """Border step in run A ÷ step at the same columns in run B (grid shifted; those columns inside its tiles),
    on a 240 m x 1,140 m strip of the Landsat crop, patch embeddings with the land-cover head's statistics."""
    import rasterio

    from scene.sources import parse_sources
    from service.gateway.scenes import InProcessExecutor, SceneJob, plan_scene, run_scene

    tile, stride = 240, 240 - overlap_m
    width, shift = tile + 4 * stride, (80 if overlap_m else 120)
    with rasterio.open(LANDSAT) as src:
        left, top = src.bounds.left + 30 * 150, src.bounds.top - 30 * 150
    sources = parse_sources({"l8": str(LANDSAT)}, {"l8": "2020-05-18"}, {"l8": "B2,B3,B4"})
    steps = []
    for name, x in (("a", left), ("b", left - shift)):
        job = SceneJob(sources, work / f"seam_{name}{overlap_m}.tif", output="patch", head="landcover",
                       tile_size_m=tile, overlap_m=overlap_m, bbox=(x, top - 240, x + width, top))
        out = run_scene(plan_scene(job, checkpoint=CHECKPOINT, heads_dir=HEADS), InProcessExecutor(runner)).out
        with rasterio.open(out) as f:
            steps.append(_steps(f.read()))
    k = shift // 20
    edges = {x0 // 20 for x0 in range(stride, width - tile + 1, stride)} | \
        {(x0 + tile) // 20 for x0 in range(0, width - tile, stride)}
    borders = sorted(c for c in edges if 0 < c < len(steps[0]) and c + k < len(steps[1]))
    return float(steps[0][borders].mean() / steps[1][[c + k for c in borders]].mean())


def child_ratio(s2: str, scale: float, batch: int, rounds: int, work: str, q: mp.Queue) -> None:
    runner = _runner()
    job = _job(Path(s2), Path(work) / "ratio.tif", scale)
    prepared = _prepared(job, 10**9)  # every tile of the scene, prepared once, for the raw runtime
    _raw(runner, prepared[:batch], batch)  # warm-up: the first forward pays for lazy initialisation
    ratios, scene_rates, raw_rates = [], [], []
    for _ in range(rounds):
        raw_rate = len(prepared) / _raw(runner, prepared, batch)
        tiles, scene_s = _scene_once(runner, job, batch)
        scene_rate = tiles / scene_s
        raw_rates.append(raw_rate)
        scene_rates.append(scene_rate)
        ratios.append(scene_rate / raw_rate)
    q.put({"ratios": ratios, "scene": scene_rates, "raw": raw_rates, "tiles": tiles,
           "seam_blended": seam(runner, Path(work), 60), "seam_half": seam(runner, Path(work), 120),
           "seam_hard": seam(runner, Path(work), 0)})


def _in_child(target: Any, *args: Any) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    try:
        result = q.get(timeout=1800)
    finally:
        p.join(timeout=60)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", default="1,4,16")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3, help="alternating raw / scene rounds for the ratio")
    ap.add_argument("--ratio-scale", type=float, default=4.0)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    scales = [float(s) for s in args.scales.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-scene-") as tmp:
        work = Path(tmp)
        s2 = build_s2(work / "S2_20200520_rgbn.tif", max([*scales, args.ratio_scale]))
        mem = [_in_child(child_memory, str(s2), s, args.batch_size, tmp) for s in scales]
        ratio = _in_child(child_ratio, str(s2), args.ratio_scale, args.batch_size, args.rounds, tmp)
    base = mem[0]["hwm_mb"]
    print(f"scene: l8 (30 m crop, EPSG:32621) + s2 (5 m RGBN, EPSG:4326) at 10 m; {TILE:g} m tiles, overlap "
          f"{OVERLAP:g} m, patch output, batch {args.batch_size}, demo encoder, 2 threads\n")
    print("| area | tiles | scene s | scene tiles/s | peak RSS MB | RSS ÷ 1x |")
    print("|---|---|---|---|---|---|")
    for m in mem:
        print(f"| {m['scale']:g}x | {m['tiles']} | {m['seconds']:.1f} | {m['tiles'] / m['seconds']:.2f} | "
              f"{m['hwm_mb']:.0f} | {m['hwm_mb'] / base:.2f} |")
    med = statistics.median(ratio["ratios"])
    print(f"\nthroughput at {args.ratio_scale:g}x ({ratio['tiles']} tiles), {args.rounds} alternating rounds: scene "
          f"{', '.join(f'{v:.2f}' for v in ratio['scene'])} tiles/s, raw runtime "
          f"{', '.join(f'{v:.2f}' for v in ratio['raw'])} tiles/s; scene ÷ raw = "
          f"{', '.join(f'{v:.2f}' for v in ratio['ratios'])} (median {med:.2f})")
    print(f"peak RSS {mem[-1]['scale']:g}x ÷ {mem[0]['scale']:g}x = {mem[-1]['hwm_mb'] / base:.2f}")
    print(f"seam (border step ÷ same ground unbroken; 1 = none): blended, quarter-tile overlap "
          f"{ratio['seam_blended']:.2f}; half-tile overlap {ratio['seam_half']:.2f}; hard cut {ratio['seam_hard']:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"memory": mem, "ratio": ratio}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
