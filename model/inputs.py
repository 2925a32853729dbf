"""Input validation and geometry planning.

``plan_inputs`` reads only shapes (never values), checks them against the sensor table, and
returns the static geometry of one *modality configuration*: patch grid, sub-patch grids, token
counts. Everything the forward pass needs to know is fixed here, so within one configuration the
graph has no data-dependent shapes (batch size and date counts stay free).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .sensors import SENSORS, Sensor, Tokenizer

OUTPUTS = ("tile", "patch", "dense", "all")
DENSE_LAYOUTS = ("spatial", "reference")
_SUFFIXES = ("_date_mask", "_dates", "_mask")


@dataclass(frozen=True)
class ModalityPlan:
    name: str
    sensor: Sensor
    pixels_per_patch: int  # input pixels along one patch side
    subgrid: int  # sub-patch tokens along one patch side (g_m)
    blocks_per_patch: int  # VHR only: 10 m blocks along one patch side

    @property
    def tokens_per_patch(self) -> int:
        return self.subgrid * self.subgrid


@dataclass(frozen=True)
class Plan:
    patch_size: int
    scale: int  # patch size in 10 m units; the combiner's positional unit
    grid: int  # patches along one tile side
    modalities: tuple[ModalityPlan, ...]  # in the caller's order; MODIS excluded
    context: ModalityPlan | None  # MODIS, when present
    output: str
    output_modality: str | None

    @property
    def n_patches(self) -> int:
        return self.grid * self.grid


def split_key(key: str) -> tuple[str, str]:
    """``"s1-asc_dates" -> ("s1-asc", "_dates")``; a bare modality gives ``(name, "")``."""
    for suffix in _SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], suffix
    return key, ""


def _fail(modality: str, message: str) -> ValueError:
    return ValueError(f"{modality}: {message}")


def plan_inputs(data: Mapping[str, torch.Tensor], patch_size: int, output: str = "tile",
                output_modality: str | None = None) -> Plan:
    """Validate ``data`` and return its geometry, or raise ``ValueError`` naming the modality."""
    if not isinstance(data, Mapping) or not data:
        raise ValueError("data must be a non-empty dict of tensors keyed by modality")
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size <= 0 or patch_size % 10:
        raise ValueError(f"patch_size must be a positive multiple of 10 metres, got {patch_size!r}")

    names: list[str] = []
    for key, value in data.items():
        base, suffix = split_key(key)
        if base not in SENSORS:
            raise ValueError(f"unknown key {key!r}: {base!r} is not a modality "
                             f"(expected one of {', '.join(sorted(SENSORS))}, optionally with "
                             f"suffix _dates, _mask or _date_mask)")
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{key}: expected a torch.Tensor, got {type(value).__name__}")
        if suffix and base not in data:
            raise ValueError(f"{key} given without the {base!r} tensor it belongs to")
        if not suffix:
            names.append(base)

    batch = None
    for name in names:
        sensor, x = SENSORS[name], data[name]
        shape = "[B, T, C, H, W]" if sensor.time_series else "[B, C, H, W]"
        if x.ndim != sensor.ndim:
            raise _fail(name, f"expected a {sensor.ndim}-D tensor {shape}, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise _fail(name, f"expected a floating-point tensor, got {x.dtype}")
        c = x.shape[-3]
        if c != sensor.channels:
            raise _fail(name, f"expected {sensor.channels} channels ({', '.join(sensor.bands)}) "
                              f"at dim {x.ndim - 3}, got {c}")
        if x.shape[-1] != x.shape[-2]:
            raise _fail(name, f"tiles must be square, got H x W = {x.shape[-2]} x {x.shape[-1]}")
        if batch is None:
            batch = x.shape[0]
        elif x.shape[0] != batch:
            raise _fail(name, f"batch size {x.shape[0]} differs from the other modalities' {batch}")
        if sensor.time_series:
            _check_series(name, data, x)
        elif any(k in data for k in (f"{name}_dates", f"{name}_mask", f"{name}_date_mask")):
            raise _fail(name, "is a single-date modality; it takes no _dates/_mask/_date_mask")

    spatial = [n for n in names if not SENSORS[n].context]
    if not spatial:
        raise ValueError("at least one modality other than modis is needed: modis is a context token")
    extent = {n: data[n].shape[-1] * SENSORS[n].gsd for n in spatial}
    ref_name, side = spatial[0], extent[spatial[0]]
    for n, e in extent.items():
        if abs(e - side) > 1e-6 * side:
            raise _fail(n, f"covers {e:g} m ({data[n].shape[-1]} px x {SENSORS[n].gsd:g} m) but "
                           f"{ref_name} covers {side:g} m; all modalities must cover the same ground")
    grid_f = side / patch_size
    grid = round(grid_f)
    if grid < 1 or abs(grid_f - grid) > 1e-6:
        raise ValueError(f"patch_size {patch_size} m does not divide the tile side {side:g} m "
                         f"(valid: multiples of 10 that divide it)")

    scale = patch_size // 10
    plans = tuple(_plan_modality(n, data[n], patch_size, scale) for n in spatial)
    context = None
    if "modis" in names:
        x = data["modis"]
        if x.shape[-1] != 1:
            raise _fail("modis", f"is a one-pixel context token: expected H = W = 1, got {x.shape[-1]}")
        context = ModalityPlan("modis", SENSORS["modis"], 1, 1, 1)

    if output == "dense":
        output_modality = output_modality or spatial[0]
        if output_modality not in spatial:
            raise ValueError(f"output_modality must be one of the input modalities {spatial} "
                             f"(modis has no dense map), got {output_modality!r}")
    return Plan(patch_size, scale, grid, plans, context, output,
                output_modality if output == "dense" else None)


def _check_series(name: str, data: Mapping[str, torch.Tensor], x: torch.Tensor) -> None:
    b, t = x.shape[:2]
    dates = data.get(f"{name}_dates")
    if dates is None:
        raise _fail(name, f"time series need {name}_dates [B, T] (day of year, 1 January = 1)")
    if tuple(dates.shape) != (b, t):
        raise _fail(name, f"{name}_dates must have shape [B, T] = [{b}, {t}] to match the series, "
                          f"got {list(dates.shape)}")
    date_mask = data.get(f"{name}_date_mask")
    if date_mask is not None and tuple(date_mask.shape) != (b, t):
        raise _fail(name, f"{name}_date_mask must have shape [B, T] = [{b}, {t}], "
                          f"got {list(date_mask.shape)}")
    value_mask = data.get(f"{name}_mask")
    if value_mask is not None:
        ok = value_mask.ndim == 5 and value_mask.shape[:2] == x.shape[:2] \
            and value_mask.shape[2] in (1, x.shape[2]) and value_mask.shape[3:] == x.shape[3:]
        if not ok:
            raise _fail(name, f"{name}_mask must have shape [B, T, 1 or C, H, W] = "
                              f"[{b}, {t}, 1|{x.shape[2]}, {x.shape[3]}, {x.shape[4]}], "
                              f"got {list(value_mask.shape)}")


def _plan_modality(name: str, x: torch.Tensor, patch_size: int, scale: int) -> ModalityPlan:
    sensor = SENSORS[name]
    if sensor.tokenizer is Tokenizer.LTAE and patch_size % sensor.subpatch:
        raise _fail(name, f"pixels are {sensor.gsd:g} m; patch_size must be a multiple of "
                          f"{sensor.subpatch:g} m, got {patch_size}")
    px = patch_size / sensor.gsd
    if abs(px - round(px)) > 1e-6:
        raise _fail(name, f"pixels are {sensor.gsd:g} m; patch_size {patch_size} m is not a whole "
                          f"number of pixels")
    px = round(px)
    if sensor.tokenizer is Tokenizer.VHR:
        return ModalityPlan(name, sensor, px, scale * sensor.cells_per_10m, scale)
    # One sub-patch per pixel; the official spatial encoder expects max(1, int(10·s / subpatch)).
    assert px == max(1, math.floor(10 * scale / sensor.subpatch + 1e-9)), (name, px, scale)
    return ModalityPlan(name, sensor, px, px, scale)
