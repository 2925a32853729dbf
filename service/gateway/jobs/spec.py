"""What ``POST /v1/jobs`` accepts, and how it becomes a ``SceneJob``: paths on a volume the service reads
(restricted to ``ANYSAT_JOB_ROOTS``) or files uploaded with the request (kept in the job's directory)."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from scene.sources import parse_sources
from service.gateway.errors import InputError
from service.gateway.scenes.job import SceneJob

OUT_NAME = {"dense": "result.tif", "patch": "result.tif", "tile": "result.parquet"}
MEDIA_TYPE = {"dense": "image/tiff; application=geotiff; profile=cloud-optimized",
              "patch": "image/tiff; application=geotiff; profile=cloud-optimized",
              "tile": "application/vnd.apache.parquet"}


class JobSpec(BaseModel):
    """A scene job: the same choices as ``anysat predict``'s flags."""

    model_config = ConfigDict(extra="forbid")

    sensors: dict[str, list[str] | str] = Field(
        default_factory=dict, description="sensor -> file paths or globs under the job roots (uploads: omit, or "
                                          "the uploaded file names)")
    dates: dict[str, str] = Field(default_factory=dict,
                                  description="sensor -> 'from-filenames' or 'YYYY-MM-DD,YYYY-MM-DD,...'")
    bands: dict[str, str] = Field(default_factory=dict, description="sensor -> the files' bands, e.g. 'B2,B3,B4'")
    nodata: dict[str, float] = Field(default_factory=dict, description="sensor -> nodata where a file has none")
    masks: dict[str, list[str] | str] = Field(
        default_factory=dict, description="sensor -> valid (cloud) mask rasters, one per file, paths under the job "
                                          "roots (uploads: parts named <sensor>_mask)")
    head: str | None = Field(None, description="a head (dense output: a class map)")
    output: Literal["dense", "patch", "tile"] = "dense"
    tile_size: float | None = Field(None, gt=0, description="tile side in metres")
    overlap: float | None = Field(None, ge=0, description="overlap of neighbouring tiles in metres")
    patch_size: int | None = Field(None, gt=0)
    output_modality: str | None = None
    crs: str | None = None
    bbox: tuple[float, float, float, float] | None = Field(None, description="left, bottom, right, top (output CRS)")
    aoi: str | None = Field(None, description="a vector file under the job roots: its features' extent is the area")
    normalize: Literal["auto", "none"] = "auto"
    embedding_dtype: Literal["float32", "float16", "int8"] = "float32"


def _inside(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path == r or r in path.parents for r in roots)


def resolve_paths(field: str, patterns: list[str] | str, roots: tuple[Path, ...]) -> list[str]:
    """Expand paths and globs (``field``: where they were given), each match, symlinks followed, inside one of
    ``roots``."""
    if not roots:
        raise InputError(field, "this service reads no paths (ANYSAT_JOB_ROOTS is unset): upload the files")
    resolved_roots = tuple(r.resolve() for r in roots)
    out: list[str] = []
    for pattern in [patterns] if isinstance(patterns, str) else patterns:
        p = Path(pattern)
        if not p.is_absolute():
            p = resolved_roots[0] / p
        magic = glob.has_magic(str(p))
        # The fixed part of the pattern must already be inside a root: no probing the filesystem outside them.
        if ".." in p.parts or not _inside(_stem(p) if magic else p.resolve(), resolved_roots):
            raise InputError(field, f"{pattern!r} is outside the job roots ({', '.join(map(str, roots))})")
        matches = sorted(glob.glob(str(p))) if magic else [str(p)]
        if not matches:
            raise InputError(field, f"{pattern!r} matches no file")
        for m in matches:
            real = Path(m).resolve()
            if not _inside(real, resolved_roots):
                raise InputError(field, f"{m!r} leads outside the job roots")
            if not real.is_file():
                raise InputError(field, f"{pattern!r}: no such file")
            out.append(str(real))
    return out


def _stem(p: Path) -> Path:
    """The directory part of a glob before its first wildcard."""
    parts = []
    for part in p.parts:
        if glob.has_magic(part):
            break
        parts.append(part)
    return Path(*parts).resolve()


MASK_SUFFIX = "_mask"


def scene_job(spec: JobSpec, files: dict[str, list[str]], out_dir: Path) -> SceneJob:
    """The spec with its files (already checked; ``<sensor>_mask`` keys hold valid masks) as a ``SceneJob``
    writing into ``out_dir``."""
    masks = {k[: -len(MASK_SUFFIX)]: v for k, v in files.items() if k.endswith(MASK_SUFFIX)}
    sensors = {k: v for k, v in files.items() if not k.endswith(MASK_SUFFIX)}
    sources = parse_sources(sensors, spec.dates, spec.bands, spec.nodata, masks)
    return SceneJob(sources, out_dir / OUT_NAME[spec.output], spec.output, spec.head, spec.tile_size, spec.overlap,
                    spec.patch_size, spec.output_modality, spec.crs, spec.bbox, spec.normalize, spec.embedding_dtype,
                    aoi=Path(spec.aoi) if spec.aoi else None)
