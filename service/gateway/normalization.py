"""Which statistics ``normalize=auto`` uses, and where they come from.

Training records the statistics it normalised with: a head's ``metadata["normalization"]`` (``{sensor: {mean,
std, source}}``, ``anysat train probe``) and an encoder checkpoint's (``{dataset: {sensor: ...}}``, pretraining).
A head only means what its metrics say on inputs normalised as in its training, so for ``normalize=auto`` the
order is: the head's recorded statistics (``/v1/masks``), then the served checkpoint's, then the sensor table's.
Every response says which were used, per sensor (``normalization``)."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from model.checkpoint import CheckpointError, read_metadata
from model.sensors import SENSORS, NormStats

log = logging.getLogger(__name__)

SENSOR_TABLE, REQUEST, NONE = "sensor table", "request", "none"


@dataclass(frozen=True)
class RecordedStats:
    """Statistics some artefact recorded, under the label responses report (``head:<name>``, ``checkpoint``)."""

    label: str
    stats: Mapping[str, NormStats] = field(default_factory=dict)


def _one(sensor: str, entry: Any, where: str) -> NormStats | None:
    """One recorded entry as ``NormStats``, or None (logged) if it cannot be applied to the sensor's bands."""
    try:
        mean = tuple(float(v) for v in entry["mean"])
        std = tuple(float(v) for v in entry["std"])
    except (KeyError, TypeError, ValueError):
        log.warning("%s: recorded statistics for %s are not {mean: [...], std: [...]}; ignored", where, sensor)
        return None
    c = SENSORS[sensor].channels
    if len(mean) != c or len(std) != c or not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
        log.warning("%s: recorded statistics for %s do not fit its %d bands (finite, std > 0); ignored",
                    where, sensor, c)
        return None
    return NormStats(mean, std, source=str(entry.get("source", where)))


def parse_recorded(recorded: Any, where: str) -> dict[str, NormStats]:
    """``{sensor: {mean, std}}`` or, as pretraining writes it, ``{dataset: {sensor: {mean, std}}}``; with several
    datasets the first one that records a sensor wins. Entries that do not fit the sensor table are skipped."""
    out: dict[str, NormStats] = {}
    if not isinstance(recorded, Mapping):
        return out
    for key, value in recorded.items():
        if not isinstance(value, Mapping):
            continue
        nested = value if key not in SENSORS else {key: value}
        for sensor, entry in nested.items():
            if sensor in SENSORS and sensor not in out and isinstance(entry, Mapping):
                stats = _one(sensor, entry, where)
                if stats is not None:
                    out[sensor] = stats
    return out


def checkpoint_stats(path: Path) -> RecordedStats:
    """What an anysat-serve checkpoint recorded (its safetensors header only); nothing for an official ``.pth``."""
    if path.suffix != ".safetensors" or not path.is_file():
        return RecordedStats("checkpoint")
    try:
        _, meta = read_metadata(path)
    except (CheckpointError, SafetensorError, OSError, KeyError, ValueError) as exc:
        log.warning("%s: cannot read recorded statistics (%s)", path, exc)
        return RecordedStats("checkpoint")
    return RecordedStats("checkpoint", parse_recorded(meta.get("normalization"), path.name))
