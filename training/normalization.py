"""Which per-band statistics a run normalises with, and how they are recorded in checkpoints/heads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from model.sensors import NormStats, get_sensor
from training.data import load_stats
from training.data.format import STATS_FILE


def resolve_stats(root: str | Path, sensors: Sequence[str], stats_path: str | Path | None = None
                  ) -> dict[str, NormStats]:
    """``stats_path`` if given, else ``<root>/stats.json`` if present; sensors it lacks fall back to the
    sensor table's published statistics; a sensor with neither is an error (run ``anysat stats``)."""
    path = Path(stats_path) if stats_path is not None else Path(root) / STATS_FILE
    found = load_stats(path) if stats_path is not None or path.is_file() else {}
    out: dict[str, NormStats] = {}
    for s in sensors:
        if s in found:
            out[s] = found[s]
        elif get_sensor(s).stats is not None:
            out[s] = get_sensor(s).stats  # type: ignore[assignment]
        else:
            raise ValueError(f"{root}: no normalisation statistics for {s!r} (none published); "
                             f"run `anysat stats {root}` or pass stats=...")
    return out


def stats_to_json(stats: Mapping[str, NormStats]) -> dict[str, Any]:
    return {s: {"mean": list(v.mean), "std": list(v.std), "source": v.source} for s, v in stats.items()}
