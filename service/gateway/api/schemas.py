"""Request options and JSON bodies (pydantic): one definition for JSON, multipart fields and query strings."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from service.gateway.inputs.arrays import DTYPES

Dtype = Literal[DTYPES]  # type: ignore[valid-type]
Format = Literal["json", "npy", "npz", "geotiff"]
HEAD_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
# The largest patch side taken, in metres: 2048 px of the coarsest sensor (30 m) is 61 km; a bound keeps a
# 400-digit patch_size from reaching arithmetic that overflows (it is refused here, naming the field).
MAX_PATCH_SIZE_M = 100_000
MAX_BANDS = 64  # per sensor in `stats`: the widest sensor has 13
PatchSize = Annotated[int, Field(gt=0, le=MAX_PATCH_SIZE_M, multiple_of=10)]
# Statistics travel to the worker as float32: beyond its range a mean or std would become infinite. (A std too
# small for float32 makes the normalised values overflow, which preparation refuses, naming the sensor.)
F32_MAX = 3.4e38
Mean = Annotated[float, Field(allow_inf_nan=False, ge=-F32_MAX, le=F32_MAX)]
Std = Annotated[float, Field(allow_inf_nan=False, gt=0, le=F32_MAX)]
# An affine term: map coordinates in metres or degrees, pixel sizes and rotations. Squaring 1e308 overflows.
MAX_AFFINE = 1e12
AffineTerm = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_AFFINE, le=MAX_AFFINE)]


class BandStats(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Finite: NaN or Infinity (which JSON parsers accept) would reach the model and its response.
    mean: list[Mean] = Field(min_length=1, max_length=MAX_BANDS,
                             description="per band, in the sensor table's band order; finite, within float32")
    std: list[Std] = Field(min_length=1, max_length=MAX_BANDS,
                           description="per band; every value > 0, finite, within float32")


class CommonOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    normalize: Literal["auto", "none", "custom"] = Field(
        "auto", description="auto: the statistics recorded in training (the head's, then the checkpoint's), else "
                            "the sensor table's (refused for a sensor with none); none: values are already "
                            "normalised; custom: `stats` gives mean/std per band. The response's `normalization` "
                            "says which were used")
    stats: dict[str, BandStats] | None = Field(None, description="normalize=custom: per sensor, mean/std per band")
    crop: Literal["none", "center"] = Field(
        "none", description="center: crop every sensor to the largest centred square that is a whole number of "
                            "patches and fits inside all of them (e.g. a 304 px aerial tile to 300 px = 60 m); "
                            "none: a tile that does not fit is refused, naming the crop that would")
    format: Format | None = Field(None, description="response encoding; default from Accept, else json")


class EmbeddingOptions(CommonOptions):
    patch_size: PatchSize = Field(
        description=f"patch side in metres (multiple of 10 dividing the tile, at most {MAX_PATCH_SIZE_M})")
    output: Literal["tile", "patch", "dense", "all"] = Field("tile", description="which embedding")
    output_modality: str | None = Field(None, description="output=dense: the sensor whose sub-patch grid is used")


class MaskOptions(CommonOptions):
    head: str = Field(pattern=HEAD_NAME, description="head name (a <name>.safetensors in the heads directory)")
    patch_size: PatchSize | None = Field(None, description="default: the head's; must equal it")
    probabilities: bool = Field(False, description="also return per-class probabilities (json/npz)")


class ArrayJSON(BaseModel):
    """An array as little-endian C-order bytes in base64, with its dtype and shape."""

    model_config = ConfigDict(extra="forbid")
    dtype: Dtype
    shape: list[int] = Field(min_length=1, max_length=4)
    data: str = Field(description="base64 of the little-endian, C-order bytes")


class SensorJSON(ArrayJSON):
    """One sensor of a tile: ``[C, H, W]`` or, for time series, ``[T, C, H, W]`` raw values."""

    shape: list[int] = Field(min_length=3, max_length=4, description="[C, H, W] or [T, C, H, W]")
    # StrictInt: true/false are not days (lax int would read true as day 1).
    dates: list[StrictInt | str] | None = Field(
        None, description="time series: day of year (1 January = 1) or ISO date, one per T")
    crs: str | None = Field(None, max_length=16_384, description="optional: CRS as 'EPSG:n' or WKT")
    transform: list[AffineTerm] | None = Field(
        None, min_length=6, max_length=6,
        description=f"optional: affine a, b, c, d, e, f (rasterio order), finite, each within +-{MAX_AFFINE:g}")


class EmbeddingsJSON(EmbeddingOptions):
    tiles: list[dict[str, SensorJSON]] = Field(min_length=1, description="one mapping sensor -> array per tile")


class MasksJSON(MaskOptions):
    tiles: list[dict[str, SensorJSON]] = Field(min_length=1, description="one mapping sensor -> array per tile")


OPTION_FIELDS = frozenset(set(EmbeddingOptions.model_fields) | set(MaskOptions.model_fields))
