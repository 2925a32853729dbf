"""Per-band z-score normalisation with the sensor table's statistics."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

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
    return standardize(x, s.mean, s.std)


def standardize(x: np.ndarray, mean: ArrayLike, std: ArrayLike, out: np.ndarray | None = None) -> np.ndarray:
    """``(float32(x) - mean) / std`` in float32 with one mean and std per band on axis -3, into ``out`` if given.

    Every caller goes through here so that normalising at the gateway or in a worker gives the same bits."""
    mean = np.asarray(mean, dtype=np.float32)[:, None, None]
    std = np.asarray(std, dtype=np.float32)[:, None, None]
    if out is None:
        out = np.empty(np.broadcast_shapes(x.shape, mean.shape), dtype=np.float32)
    np.subtract(x, mean, out=out, dtype=np.float32, casting="unsafe")  # casts x chunk by chunk, no float32 copy
    return np.divide(out, std, out=out)
