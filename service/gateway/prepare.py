"""Decoded tiles -> queue requests: limits, crop to the patch grid (``crop=center``), normalisation (which
statistics: ``service.gateway.normalization``), nodata as the model's value mask, georeference checks and the
model's own shape validation (``model.plan_inputs`` on a batch of one), then the batch key (``ModalityConfig``).

Every failure is an ``ApiError`` naming the field; nothing here can raise anything else on bad input.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from model.inputs import plan_inputs
from model.normalize import standardize
from model.sensors import MODALITIES, SENSORS, NormStats
from service.engine.payload import STATS_SUFFIX
from service.gateway.api.schemas import BandStats
from service.gateway.crop import center_crop, check_fit
from service.gateway.errors import InputError, LimitExceeded
from service.gateway.georef import check_alignment, reference
from service.gateway.inputs.tile import Georef, SensorInput, TileInput
from service.gateway.normalization import NONE, REQUEST, SENSOR_TABLE, RecordedStats
from service.gateway.settings import GatewaySettings
from service.runtime.configuration import ModalityConfig


@dataclass(frozen=True)
class Query:
    """What is asked of every tile of a request."""

    patch_size: int
    output: str = "tile"
    output_modality: str | None = None
    head: str | None = None
    normalize: str = "auto"
    stats: dict[str, BandStats] | None = None
    # normalize=auto: statistics recorded by training, most specific first (the head's, then the checkpoint's);
    # the sensor table's come after them.
    recorded: tuple[RecordedStats, ...] = ()
    crop: str = "none"  # "center": crop every sensor to the largest centred square that fits the patch grid


@dataclass(frozen=True)
class PreparedTile:
    config: ModalityConfig
    tensors: dict[str, np.ndarray]  # the worker payload: raw values + stats (see _payload), int64 dates, no batch axis
    georef: Georef | None  # of the whole tile (first georeferenced sensor), for output grids
    side_m: float
    normalization: dict[str, str] = field(default_factory=dict)  # sensor -> whose statistics (see _stats)


def _check_sensor(name: str, s: SensorInput, settings: GatewaySettings) -> None:
    if name not in SENSORS:
        raise InputError(s.field, f"unknown sensor {name!r}; expected one of {', '.join(MODALITIES)}")
    sensor = SENSORS[name]
    layout = "[T, C, H, W]" if sensor.time_series else "[C, H, W]"
    if s.data.ndim != sensor.ndim - 1:
        raise InputError(s.field, f"expected {layout}, got shape {list(s.data.shape)}")
    if s.data.dtype.kind not in "uif":
        raise InputError(s.field, f"expected numbers, got dtype {s.data.dtype}")
    h, w = s.data.shape[-2:]
    if h * w > settings.max_pixels_per_sensor:
        raise LimitExceeded("max_pixels_per_sensor", s.field, f"{h} x {w} = {h * w} pixels, "
                                                              f"at most {settings.max_pixels_per_sensor}")
    if s.data.shape[-3] != sensor.channels:
        raise InputError(s.field, f"expected {sensor.channels} bands ({', '.join(sensor.bands)}) "
                                  f"in {layout}, got {s.data.shape[-3]}")
    if sensor.time_series:
        t = s.data.shape[0]
        if t > settings.max_dates_per_series:
            raise LimitExceeded("max_dates_per_series", s.field, f"{t} dates")
        if s.dates is None:
            raise InputError(s.dates_field, f"{name} is a time series: give one date per acquisition "
                                            f"(day of year, 1 January = 1, or ISO date)")
        if len(s.dates) != t:
            raise InputError(s.dates_field, f"{len(s.dates)} dates for {t} acquisitions in {s.field}")
    elif s.dates is not None:
        raise InputError(s.dates_field, f"{name} is a single-date sensor; it takes no dates")


# Integer dtypes a payload carries: converting them to float32 in the worker gives the same values, and an
# 8- or 16-bit tile is 2-4x smaller in Redis and on the wire than its float32 version. Smallest first.
_WIRE_INTS = tuple(np.dtype(t) for t in ("uint8", "int8", "uint16", "int16"))


def wire_array(x: np.ndarray) -> np.ndarray:
    """``x`` in the smallest payload dtype that holds its values exactly: 8/16-bit integers and float16 as they
    came; wider integers, and floats whose values are all whole numbers (digital numbers or reflectances stored
    as float32, as in the TreeSatAI HDF5 files), narrowed to an 8/16-bit integer type when their range fits;
    anything else float32 (what the model computes in anyway)."""
    if not x.size:
        return x.astype(np.float32)
    if x.dtype in _WIRE_INTS or x.dtype == np.float16:
        return x
    if x.dtype.kind in "iu" or (x.dtype.kind == "f" and _whole(x)):
        lo, hi = x.min(), x.max()
        for dt in _WIRE_INTS:
            if np.iinfo(dt).min <= lo and hi <= np.iinfo(dt).max:
                return x.astype(dt)
    return x if x.dtype == np.float32 else x.astype(np.float32)


def _whole(x: np.ndarray) -> bool:
    """All values are whole numbers (NaN is not; infinities fail the range check after). A sample first, so
    that the common case of real-valued data costs one small pass, not a full copy."""
    flat = x.reshape(-1)
    sample = flat[:: max(1, flat.size // 1024)]
    return bool(np.array_equal(sample, np.rint(sample)) and np.array_equal(flat, np.rint(flat)))


def _stats(name: str, query: Query) -> tuple[NormStats | None, str]:
    """The statistics the worker normalises ``name`` with (None for ``normalize=none``) and whose they are:
    ``head:<name>`` / ``checkpoint`` (recorded by training), ``sensor table``, ``request`` or ``none``."""
    if query.normalize == "none":
        return None, NONE
    if query.normalize == "auto":
        for recorded in query.recorded:
            if name in recorded.stats:
                return recorded.stats[name], recorded.label
        table = SENSORS[name].stats
        if table is not None:
            return table, SENSOR_TABLE
        searched = " or ".join([r.label for r in query.recorded] + ["the sensor table"])
        raise InputError("normalize", f"{name}: no normalisation statistics for normalize=auto (none in "
                                      f"{searched}); pass normalize=custom with stats (mean and std per band: "
                                      f"{', '.join(SENSORS[name].bands)}), or normalize=none for values already "
                                      "normalised")
    given = (query.stats or {}).get(name)
    if given is None:
        raise InputError("stats", f"normalize=custom needs stats for {name} (mean and std per band)")
    c = SENSORS[name].channels
    if len(given.mean) != c or len(given.std) != c:
        raise InputError(f"stats.{name}", f"expected {c} means and {c} stds ({', '.join(SENSORS[name].bands)}), "
                                          f"got {len(given.mean)} and {len(given.std)}")
    if min(given.std) <= 0:
        raise InputError(f"stats.{name}.std", "every std must be > 0")
    return NormStats(tuple(given.mean), tuple(given.std), source="request"), REQUEST


def _value_mask(name: str, s: SensorInput) -> np.ndarray | None:
    """The model's ``<name>_mask`` for the input's nodata: ``[T, 1|C, H, W]`` bool, True = a real value (1 on the
    band axis when every band agrees); None when every value is real. The model replaces masked values by the
    sensor's learned missing-value scalar, a mechanism its time-series tokenizer alone has."""
    if s.valid is None:
        return None
    valid = np.broadcast_to(s.valid, s.data.shape)
    if valid.all():
        return None
    if not valid.any():
        raise InputError(s.field, f"every value of {name} is nodata (the file's nodata value or mask): nothing to "
                                  f"embed; leave {name} out of the request")
    if not SENSORS[name].time_series:
        raise InputError(s.field, f"{valid.size - int(np.count_nonzero(valid))} of {valid.size} values of {name} "
                                  "are nodata; the model has a missing-value mask for time series only, not for "
                                  f"a single-date image like {name}: crop to valid ground, or fill the holes")
    per_pixel = bool((valid == valid[:, :1]).all())
    return np.ascontiguousarray(valid[:, :1] if per_pixel else valid)


def _payload(name: str, s: SensorInput, query: Query) -> tuple[dict[str, np.ndarray], str]:
    """The sensor's raw values in a compact dtype, plus ``<name>_stats`` ([2, C]: means, stds) when the worker
    is to normalise them and ``<name>_mask`` where the input declares nodata; and whose statistics they are.
    Checked here that the normalised values will be finite. Masked values are sent as 0: the model replaces them."""
    mask = _value_mask(name, s)
    raw = s.data if mask is None or s.valid is None else np.where(s.valid, s.data, np.zeros((), s.data.dtype))
    x = wire_array(raw)
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise InputError(s.field, "contains NaN or infinite values (a GeoTIFF declaring NaN as its nodata value "
                                  "marks them as missing)")
    tensors = {name: x} if mask is None else {name: x, f"{name}_mask": mask}
    stats, source = _stats(name, query)
    if stats is None:
        return tensors, source
    # Normalisation is monotonic per band, so each band's extremes bound all of its normalised values.
    axes = tuple(i for i in range(x.ndim) if i != x.ndim - 3)
    extremes = np.stack([x.min(axis=axes), x.max(axis=axes)], axis=-1)[..., None]  # [C, 2, 1]
    if not np.isfinite(standardize(extremes, stats.mean, stats.std)).all():
        raise InputError(s.field, "contains values that overflow float32 after normalisation")
    tensors[f"{name}{STATS_SUFFIX}"] = np.asarray([stats.mean, stats.std], dtype=np.float32)
    return tensors, source


def _field_of(message: str, tile: TileInput) -> str:
    head = message.split(":", 1)[0].strip()
    if head in tile:
        return tile[head].field
    for name in ("patch_size", "output_modality", "output"):
        if message.startswith(name):
            return name
    return "tiles"


def prepare_tile(tile: TileInput, query: Query, settings: GatewaySettings, field: str) -> PreparedTile:
    if not tile:
        raise InputError(field, "no sensors in this tile")
    for name, s in tile.items():
        _check_sensor(name, s, settings)
    if query.stats:
        extra = [n for n in query.stats if n not in tile]
        if extra and query.normalize == "custom":
            raise InputError(f"stats.{extra[0]}", "statistics for a sensor that is not in the request")
    if query.crop == "center":
        tile = center_crop(tile, query.patch_size)
    check_fit(tile, query.patch_size)
    check_alignment(tile)
    tensors: dict[str, np.ndarray] = {}
    shapes: dict[str, torch.Tensor] = {}
    normalization: dict[str, str] = {}
    for name, s in tile.items():
        payload, normalization[name] = _payload(name, s, query)
        tensors.update(payload)
        for key in (name, f"{name}_mask"):  # plan_inputs reads shapes only: no storage
            if key in payload:
                shapes[key] = torch.empty(()).expand(1, *payload[key].shape)
        if s.dates is not None:
            tensors[f"{name}_dates"] = s.dates.astype(np.int64)
            shapes[f"{name}_dates"] = torch.from_numpy(tensors[f"{name}_dates"])[None]
    try:
        plan = plan_inputs(shapes, query.patch_size, query.output, query.output_modality)
    except ValueError as exc:
        raise InputError(_field_of(str(exc), tile), str(exc)) from None
    if plan.n_patches > settings.max_patches_per_tile:
        raise LimitExceeded("max_patches_per_tile", "patch_size",
                            f"{plan.grid} x {plan.grid} = {plan.n_patches} patches per tile", status=422)
    config = ModalityConfig(tuple((n, int(s.data.shape[-1])) for n, s in tile.items()), query.patch_size,
                            query.output, query.output_modality, query.head)
    ref = reference(tile)
    first = plan.modalities[0]
    side_m = first.sensor.gsd * tile[first.name].data.shape[-1]
    return PreparedTile(config, tensors, ref[1] if ref else None, side_m, normalization)


def normalization_used(tiles: list[PreparedTile]) -> dict[str, str]:
    """Per sensor, whose statistics normalised it (one answer per sensor: the rule depends on the sensor only)."""
    used: dict[str, str] = {}
    for t in tiles:
        used.update(t.normalization)
    return used


def prepare(tiles: list[TileInput], query: Query, settings: GatewaySettings) -> list[PreparedTile]:
    if len(tiles) > settings.max_tiles_per_request:
        raise LimitExceeded("max_tiles_per_request", "tiles",
                            f"{len(tiles)} tiles, at most {settings.max_tiles_per_request}")
    return [prepare_tile(t, query, settings, f"tiles[{i}]") for i, t in enumerate(tiles)]
