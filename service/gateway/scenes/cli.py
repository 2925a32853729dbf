"""``anysat predict``: a scene or region through the model, in this process, to a COG or GeoParquet.

    anysat predict --sensor l8=examples/data/landsat8/LC08_224078_20200518_crop512.tif --bands l8=B2,B3,B4 \\
        --dates l8=2020-05-18 --head landcover --checkpoint artifacts/demo/encoder.safetensors --out landcover.tif

Every input is checked before any work (exit status 2 with the field at fault); the output appears at --out
only when complete (``--resume`` continues a stopped run from ``<out>.partial/``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from scene.errors import SceneError
from scene.sources import parse_sources
from service.gateway.errors import ApiError
from service.gateway.scenes.executor import InProcessExecutor
from service.gateway.scenes.job import EMBEDDING_DTYPES, OUTPUTS, SceneJob
from service.gateway.scenes.pipeline import run_scene, state_dir
from service.gateway.scenes.plan import ScenePlan, plan_scene
from service.gateway.scenes.settings import PredictSettings


def _pairs(values: Sequence[str] | None, flag: str, multi: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for v in values or ():
        name, sep, rest = v.partition("=")
        if not sep or not name or not rest:
            raise SceneError(flag.lstrip("-"), f"expected {flag} NAME=VALUE, got {v!r}")
        if multi:
            out.setdefault(name, []).append(rest)
        elif name in out:
            raise SceneError(f"{flag.lstrip('-')}.{name}", f"given twice ({out[name]!r}, {rest!r})")
        else:
            out[name] = rest
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="anysat predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sensor", action="append", required=True, metavar="NAME=GLOB",
                   help="a sensor's files (repeatable; a series: one file per date, or one dates x bands file)")
    p.add_argument("--dates", action="append", metavar="NAME=from-filenames|D1,D2,...",
                   help="a series' dates, in file order (default: from the file names)")
    p.add_argument("--bands", action="append", metavar="NAME=B2,B3,B4",
                   help="the files' bands in file order, when they hold only some (the others are filled)")
    p.add_argument("--nodata", action="append", metavar="NAME=VALUE", help="nodata value where a file declares none")
    p.add_argument("--mask", action="append", metavar="NAME=GLOB",
                   help="valid (cloud) masks, one raster per file of the sensor in the same order, one band per "
                        "date: nonzero = clear")
    p.add_argument("--head", help="a head of the heads directory (dense: a class map)")
    p.add_argument("--output", choices=OUTPUTS, default="dense",
                   help="dense: per pixel of the output sensor (class map with --head); patch: per patch; tile: "
                        "one GeoParquet row per tile")
    p.add_argument("--out", required=True, type=Path, help=".tif (dense, patch) or .parquet (tile)")
    p.add_argument("--tile-size", type=float, help="tile side in metres (default: 32 patches)")
    p.add_argument("--overlap", type=float, help="overlap of neighbouring tiles in metres (default: a quarter tile)")
    p.add_argument("--patch-size", type=int, help="patch size in metres (default: the head's, else 20)")
    p.add_argument("--output-modality", help="dense without a head: the sensor whose pixel grid (default: first)")
    p.add_argument("--crs", help="output CRS, projected in metres (default: the first file's)")
    p.add_argument("--bbox", help="LEFT,BOTTOM,RIGHT,TOP in the output CRS (default: the inputs' common area)")
    p.add_argument("--aoi", type=Path, help="a vector file (GeoPackage, GeoJSON, ...): its features' extent is the "
                                            "area, within the inputs' common area")
    p.add_argument("--normalize", choices=("auto", "none"), default="auto")
    p.add_argument("--embedding-dtype", choices=EMBEDDING_DTYPES, default="float32")
    p.add_argument("--resume", action="store_true", help="continue a stopped run of the same job")
    p.add_argument("--no-progress", action="store_true")
    for name in ("checkpoint", "heads-dir", "runtime", "export-dir", "batch-size", "max-area-km2", "max-tiles",
                 "max-in-flight-tiles"):
        p.add_argument(f"--{name}", help=f"ANYSAT_{name.upper().replace('-', '_')} (docs/settings.md)")
    return p


def _settings(args: argparse.Namespace) -> PredictSettings:
    given = {k: getattr(args, k) for k in ("checkpoint", "heads_dir", "runtime", "export_dir", "batch_size",
                                           "max_area_km2", "max_tiles", "max_in_flight_tiles")
             if getattr(args, k) is not None}
    return PredictSettings(**given)


def _number(text: str, field: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise SceneError(field, f"expected a number, got {text!r}") from None


def _bbox(text: str | None) -> tuple[float, float, float, float] | None:
    if text is None:
        return None
    try:
        left, bottom, right, top = (float(v) for v in text.split(","))
    except ValueError:
        raise SceneError("bbox", f"expected LEFT,BOTTOM,RIGHT,TOP (4 numbers), got {text!r}") from None
    if not (left < right and bottom < top):
        raise SceneError("bbox", f"{text!r}: left < right and bottom < top")
    return left, bottom, right, top


def build(args: argparse.Namespace, settings: PredictSettings) -> ScenePlan:
    """The flags as a checked plan; raises SceneError / ApiError naming the input at fault."""
    sources = parse_sources(_pairs(args.sensor, "--sensor", multi=True), _pairs(args.dates, "--dates"),
                            _pairs(args.bands, "--bands"),
                            {k: _number(v, f"nodata.{k}") for k, v in _pairs(args.nodata, "--nodata").items()},
                            _pairs(args.mask, "--mask", multi=True))
    job = SceneJob(sources, args.out, args.output, args.head, args.tile_size, args.overlap, args.patch_size,
                   args.output_modality, args.crs, _bbox(args.bbox), args.normalize, args.embedding_dtype,
                   aoi=args.aoi)
    return plan_scene(job, checkpoint=settings.resolved_checkpoint(), heads_dir=settings.resolved_heads_dir(),
                      limits=settings.limits())


class _Bar:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, unit="tile", dynamic_ncols=True, file=sys.stderr)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = _settings(args)
        plan = build(args, settings)
    except (SceneError, ApiError) as exc:
        print(f"anysat predict: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        print(f"anysat predict: {exc}", file=sys.stderr)
        return 2
    g = plan.grid
    where = f"{plan.out_shape[1]} x {plan.out_shape[0]} px at {plan.out_px:g} m" if plan.out_px else "one row per tile"
    print(f"anysat predict: {g.n_tiles} tiles ({g.ncols} x {g.nrows}) of {g.tile_m:g} m, overlap {g.overlap_m:g} m, "
          f"patch {plan.query.patch_size} m over {g.width_m:.0f} m x {g.height_m:.0f} m in {g.crs.to_string()}; "
          f"{plan.job.output} output {where} -> {plan.job.out}", file=sys.stderr)
    from service.runtime.runner import runner_from_settings  # the model loads once the job is known to be sound

    try:
        runner = runner_from_settings(settings.model_copy(update={"checkpoint": settings.resolved_checkpoint(),
                                                                  "heads_dir": settings.resolved_heads_dir()}))
    except (ValueError, RuntimeError) as exc:
        print(f"anysat predict: {exc}", file=sys.stderr)
        return 2
    bar = _Bar(not args.no_progress)
    try:
        result = run_scene(plan, InProcessExecutor(runner), batch_size=settings.batch_size, resume=args.resume,
                           progress=bar, limits=settings.limits())
    except SceneError as exc:
        bar.close()
        print(f"anysat predict: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        bar.close()
        print(f"anysat predict: stopped; finished tile rows are kept in {state_dir(plan.job.out)} — run the same "
              f"command with --resume to continue", file=sys.stderr)
        return 130
    bar.close()
    rate = result.tiles_run / max(result.seconds, 1e-9)
    print(f"anysat predict: wrote {result.out} ({result.tiles_run} tiles run, {result.tiles_skipped} without valid "
          f"data, {result.tiles_resumed} from an earlier run; {result.seconds:.1f} s, {rate:.2f} tiles/s)",
          file=sys.stderr)
    return 0
