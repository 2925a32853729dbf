"""A scene job checked and laid out before any work: every bad input is refused here (``SceneError`` /
``ApiError``, naming the field), then the grid, the model query and the output's geometry are fixed.

Checked: the files open and have a CRS (``scene.sources``), their footprints overlap (``scene.grid``), each is
at a resolution its sensor can be read at, the head exists and fits the sensors, a tile of zeros of the job's
shape passes the gateway's own preparation (band counts, patch grid, statistics for ``normalize=auto``, per-tile
limits), and the area and tile count are within the limits."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import rasterio.dtypes
import torch
from affine import Affine
from rasterio.crs import CRS

from model.heads import HeadConfig
from model.inputs import plan_inputs
from model.sensors import SENSORS
from scene.errors import SceneError, SceneLimitError
from scene.grid import Bounds, TileGrid, common_area, projected_crs, vector_bounds
from scene.layers import check_resolution, sensor_px, source_res
from service.gateway.errors import ApiError
from service.gateway.heads import HeadRegistry
from service.gateway.normalization import checkpoint_stats
from service.gateway.prepare import Query, _stats, prepare_tile
from service.gateway.scenes.job import EMBEDDING_DTYPES, OUTPUTS, SceneJob, SceneLimits
from service.gateway.scenes.tiles import synthetic_input
from service.gateway.settings import GatewaySettings

DEFAULT_PATCH = 20
DEFAULT_TILE_PATCHES = 32


@dataclass(frozen=True)
class ScenePlan:
    job: SceneJob
    grid: TileGrid
    query: Query  # what every tile asks of the model (the batch key follows from it)
    settings: GatewaySettings  # the per-tile limits prepare applies
    head: HeadConfig | None
    mask: bool  # a class map (dense + segmentation head) rather than embeddings
    out_px: float | None  # metres per output pixel (None: one row per tile, GeoParquet)
    fill: dict[str, np.ndarray] = field(default_factory=dict)  # sensor -> raw value per table band for absent bands

    @property
    def tile_out_px(self) -> int:
        assert self.out_px is not None
        return round(self.grid.tile_m / self.out_px)

    @property
    def ramp_out_px(self) -> float:
        assert self.out_px is not None
        return self.grid.overlap_m / self.out_px

    @property
    def out_shape(self) -> tuple[int, int]:
        assert self.out_px is not None
        return self.grid.shape(self.out_px)

    @property
    def out_transform(self) -> Affine:
        assert self.out_px is not None
        return self.grid.transform(self.out_px)

    def fingerprint(self) -> str:
        """What must be equal for ``--resume`` to continue a run: inputs (paths, sizes, mtimes), grid, query."""
        files = [(str(f.path), f.path.stat().st_size, f.path.stat().st_mtime) if f.path.exists() else (str(f.path),)
                 for s in self.job.sources.values() for f in s.files]
        g = self.grid
        key = [files, [s.bands for s in self.job.sources.values()],
               [str(d) for s in self.job.sources.values() for d in s.dates], g.crs.to_wkt(), g.left, g.top,
               g.width_m, g.height_m, g.tile_m, g.overlap_m, self.job.output, self.job.head, self.query.patch_size,
               self.job.embedding_dtype, self.job.normalize,
               [[str(m) for m in s.masks or ()] for s in self.job.sources.values()]]
        return hashlib.sha256(json.dumps(key, default=str).encode()).hexdigest()


def _head(job: SceneJob, checkpoint: Path, heads_dir: Path | None) -> tuple[HeadConfig | None, tuple]:
    recorded = (checkpoint_stats(checkpoint),)
    if job.head is None:
        return None, recorded
    registry = HeadRegistry(heads_dir, checkpoint)
    config = registry.config(job.head)
    extra = [n for n in job.sources if n not in config.modalities]
    if extra:
        raise SceneError(f"sensor.{extra[0]}", f"head {job.head!r} was fitted on {', '.join(config.modalities)}; it "
                                               f"cannot use {extra[0]}")
    return config, (registry.recorded_stats(job.head), *recorded)


def _footprints(job: SceneJob, crs: CRS | None) -> tuple[CRS, list[tuple[str, CRS, Bounds]],
                                                           list[tuple[str, Path, float]]]:
    prints: list[tuple[str, CRS, Bounds]] = []
    resolutions: list[tuple[str, Path, float]] = []
    for name, source in job.sources.items():
        for f in source.files:
            with rasterio.open(f.path) as src:
                crs = crs or src.crs
                left, bottom, right, top = src.bounds
                prints.append((f"sensor.{name}: {f.path}", src.crs, (left, bottom, right, top)))
                resolutions.append((name, f.path, source_res(src, crs)))
    assert crs is not None
    return crs, prints, resolutions


def _shape(name: str, tile_m: float) -> list[int]:
    sensor = SENSORS[name]
    side = 1 if sensor.context else round(tile_m / sensor.gsd)
    return ([1] if sensor.time_series else []) + [sensor.channels, side, side]


def _out_px(job: SceneJob, head: HeadConfig | None, patch: int, modality: str | None, tile_m: float) -> float | None:
    if job.output == "tile":
        return None
    if job.output == "patch":
        return float(patch)
    assert modality is not None
    shapes = {n: torch.empty(()).expand(1, *_shape(n, tile_m)) for n in job.sources}
    for n in job.sources:
        if SENSORS[n].time_series:
            shapes[f"{n}_dates"] = torch.ones(1, 1, dtype=torch.int64)
    try:
        plan = plan_inputs(shapes, patch, "dense", modality)
    except ValueError as exc:
        raise SceneError(str(exc).split(":", 1)[0] if ":" in str(exc) else "patch_size", str(exc)) from None
    sub = next(m for m in plan.modalities if m.name == modality).subgrid
    return patch / (sub * (head.upsample if head is not None and job.output == "dense" else 1))


def plan_scene(job: SceneJob, *, checkpoint: Path, heads_dir: Path | None = None, limits: SceneLimits | None = None,
               settings: GatewaySettings | None = None) -> ScenePlan:
    limits = limits or SceneLimits()
    if job.output not in OUTPUTS:
        raise SceneError("output", f"one of {', '.join(OUTPUTS)}, got {job.output!r}")
    if job.embedding_dtype not in EMBEDDING_DTYPES:
        raise SceneError("embedding_dtype", f"one of {', '.join(EMBEDDING_DTYPES)}, got {job.embedding_dtype!r}")
    if job.embedding_dtype == "float16" and job.output != "tile" and not rasterio.dtypes.check_dtype("float16"):
        raise SceneError("embedding_dtype", f"float16 GeoTIFFs need GDAL 3.11 or later (rasterio here has GDAL "
                                            f"{rasterio.__gdal_version__}): use float32 or int8")
    suffix = job.out.suffix.lower()
    want = (".parquet",) if job.output == "tile" else (".tif", ".tiff")
    if suffix not in want:
        raise SceneError("out", f"--output {job.output} writes {' or '.join(want)}, got {job.out.name!r}")
    if not job.sources:
        raise SceneError("sensor", "no sensor given")
    if not checkpoint.is_file():
        raise SceneError("checkpoint", f"{checkpoint}: no such file")
    head, recorded = _head(job, checkpoint, heads_dir)
    mask = head is not None and job.output == "dense"
    if mask and head is not None and head.kind != "segmentation":
        raise SceneError("head", f"{job.head!r} is a {head.kind} head (one answer per tile): use --output tile, "
                                 f"or a segmentation head for a class map")
    patch = job.patch_size or (head.patch_size if head is not None else DEFAULT_PATCH)
    if head is not None and patch != head.patch_size:
        raise SceneError("patch_size", f"head {job.head!r} was fitted at {head.patch_size} m, got {patch}")
    spatial = [n for n in job.sources if not SENSORS[n].context]
    if not spatial:
        raise SceneError("sensor", "at least one sensor other than modis is needed (modis is a context token)")
    modality = None
    if job.output == "dense":
        modality = head.output_modality if mask and head is not None else (job.output_modality or spatial[0])
        if modality not in spatial:
            raise SceneError("output_modality", f"{modality!r} is not one of the sensors given ({', '.join(spatial)})")
    tile_m = float(job.tile_size_m or patch * DEFAULT_TILE_PATCHES)
    overlap_m = float(job.overlap_m if job.overlap_m is not None else math.floor(tile_m / 4 / patch) * patch)
    for name in job.sources:
        sensor = SENSORS[name]
        if not sensor.context and abs(tile_m / sensor.gsd - round(tile_m / sensor.gsd)) > 1e-6:
            raise SceneError("tile_size", f"{tile_m:g} m is not a whole number of {name} pixels ({sensor.gsd:g} m)")
    crs, prints, resolutions = _footprints(job, CRS.from_user_input(job.crs) if job.crs else None)
    crs = projected_crs(crs, "crs")
    for name, path, res in resolutions:
        check_resolution(SENSORS[name], path, res)
    if job.aoi is not None and job.bbox is not None:
        raise SceneError("aoi", "give an area of interest or a bbox, not both")
    area = common_area(prints, crs, vector_bounds(job.aoi, crs) if job.aoi is not None else job.bbox)
    grid = TileGrid.covering(crs, area, tile_m, overlap_m, float(patch))
    km2 = grid.width_m * grid.height_m / 1e6
    if km2 > limits.max_area_km2:
        raise SceneLimitError("max_area_km2", "area", f"{km2:.1f} km² ({grid.width_m:.0f} m x {grid.height_m:.0f} m), "
                                                      f"at most {limits.max_area_km2:g} km²: pass a --bbox")
    if grid.n_tiles > limits.max_tiles:
        raise SceneLimitError("max_tiles", "tile_size", f"{grid.n_tiles} tiles, at most {limits.max_tiles}: pass a "
                                                        f"larger --tile-size or a --bbox")
    for name in job.sources:
        sensor_px(SENSORS[name], grid)  # a context sensor needs the tile origins on a pixel grid
    query = Query(patch, "dense" if job.output == "dense" else job.output, modality, job.head if mask else None,
                  job.normalize, None, recorded)
    settings = settings or GatewaySettings()
    out_px = _out_px(job, head, patch, modality, tile_m)
    try:
        # Absent bands get the value their statistics normalise to 0, as training filled them (TileDataset).
        fill = {}
        for name in job.sources:
            stats = _stats(name, query)[0] if job.sources[name].bands is not None else None
            fill[name] = (np.asarray(stats.mean, np.float32) if stats is not None
                          else np.zeros(SENSORS[name].channels, np.float32))
        plan = ScenePlan(job, grid, query, settings, head, mask, out_px, fill)
        # the gateway's own checks on a tile of this job's shape, before any real tile is read
        prepare_tile(synthetic_input(plan, dt.date(2020, 1, 1)), query, settings, "tile")
    except ApiError as exc:
        raise SceneError(exc.field or "tile", exc.message) from None
    return plan
