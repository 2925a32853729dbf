"""Per-band z-score normalisation with the sensor table's statistics."""

from __future__ import annotations

import numpy as np

from .sensors import NormStats, get_sensor


class UnknownStatisticsError(ValueError):
    """No published statistics for a sensor: the caller must pass its own (or normalise itself)."""


def stats_for(name: str) -> NormStats:
    sensor = get_sensor(name)
    if sensor.stats is None:
        raise UnknownStatisticsError(
            f"{name}: no published normalisation statistics; pass mean/std per band "
            f"({', '.join(sensor.bands)}) or compute them with `anysat stats`")
    return sensor.stats


def normalize(name: str, x: np.ndarray, stats: NormStats | None = None) -> np.ndarray:
    """``(x - mean) / std`` per band; bands on axis -3 (``[C,H,W]`` or ``[T,C,H,W]``, batched or not)."""
    s = stats or stats_for(name)
    if x.shape[-3] != len(s.mean):
        raise ValueError(f"{name}: {x.shape[-3]} bands but statistics for {len(s.mean)}")
    mean = np.asarray(s.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(s.std, dtype=np.float32)[:, None, None]
    return ((x.astype(np.float32) - mean) / std).astype(np.float32)
