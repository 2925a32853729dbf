"""Request options and JSON bodies (pydantic): one definition for JSON, multipart fields and query strings."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from service.gateway.inputs.arrays import DTYPES

Dtype = Literal[DTYPES]  # type: ignore[valid-type]
Format = Literal["json", "npy", "npz", "geotiff"]
HEAD_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"


class BandStats(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mean: list[float] = Field(min_length=1, description="per band, in the sensor table's band order")
    std: list[float] = Field(min_length=1, description="per band; every value > 0")


class CommonOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    normalize: Literal["auto", "none", "custom"] = Field(
        "auto", description="auto: the sensor table's statistics (refused for sensors without published ones); "
                            "none: values are already normalised; custom: `stats` gives mean/std per band")
    stats: dict[str, BandStats] | None = Field(None, description="normalize=custom: per sensor, mean/std per band")
    format: Format | None = Field(None, description="response encoding; default from Accept, else json")


class EmbeddingOptions(CommonOptions):
    patch_size: int = Field(gt=0, multiple_of=10, description="patch side in metres (multiple of 10 dividing the tile)")
    output: Literal["tile", "patch", "dense", "all"] = Field("tile", description="which embedding")
    output_modality: str | None = Field(None, description="output=dense: the sensor whose sub-patch grid is used")


class MaskOptions(CommonOptions):
    head: str = Field(pattern=HEAD_NAME, description="head name (a <name>.safetensors in the heads directory)")
    patch_size: int | None = Field(None, gt=0, multiple_of=10, description="default: the head's; must equal it")
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
    dates: list[int | str] | None = Field(
        None, description="time series: day of year (1 January = 1) or ISO date, one per T")
    crs: str | None = Field(None, description="optional: CRS as 'EPSG:n' or WKT")
    transform: list[float] | None = Field(
        None, min_length=6, max_length=6, description="optional: affine a, b, c, d, e, f (rasterio order)")


class EmbeddingsJSON(EmbeddingOptions):
    tiles: list[dict[str, SensorJSON]] = Field(min_length=1, description="one mapping sensor -> array per tile")


class MasksJSON(MaskOptions):
    tiles: list[dict[str, SensorJSON]] = Field(min_length=1, description="one mapping sensor -> array per tile")


OPTION_FIELDS = frozenset(set(EmbeddingOptions.model_fields) | set(MaskOptions.model_fields))
