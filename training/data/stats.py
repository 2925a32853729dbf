"""``anysat stats``: per-sensor, per-band normalisation statistics of a tile dataset, streamed tile by tile.

Two estimates are computed in one pass, per band, over the valid pixels (not NaN, not the file's nodata):

* ``per_tile``: the mean of per-tile means and the mean of per-tile (population) stds — what the official
  dataset classes compute (reference doc §1.14). The mean of per-tile stds leaves out the variation
  *between* tiles, so it underestimates the spread of the data.
* ``global``: the true mean and (population) std over all pixels, merged tile by tile with Chan et al.'s
  parallel update in float64 (no catastrophic cancellation, no second pass).

``stats.json`` (in the dataset directory by default) records both; the ``mean``/``std`` it presents as
*the* statistics — what ``load_stats`` returns, in ``model.sensors.NormStats`` form — are the
``global`` ones unless ``--method per-tile`` asks for the official estimator (e.g. to match how a
checkpoint was trained). Bands never observed (files holding a band subset) are ``null`` there and load
as mean 0, std 1, i.e. left unscaled; so is a band whose std is 0.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from model.sensors import NormStats, get_sensor
from training.data.format import STATS_FILE, read_index, sensor_path
from training.data.tilefile import TileSensor, read_sensor_file

STATS_FORMAT = "anysat-stats"
Method = Literal["global", "per-tile"]


@dataclass
class BandAccumulator:
    """Streaming statistics of ``channels`` bands; feed it one tile at a time."""

    channels: int
    n: np.ndarray = field(init=False)
    mean: np.ndarray = field(init=False)
    m2: np.ndarray = field(init=False)
    tile_mean_sum: np.ndarray = field(init=False)
    tile_std_sum: np.ndarray = field(init=False)
    tiles: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        z = np.zeros(self.channels, np.float64)
        self.n, self.mean, self.m2 = z.copy(), z.copy(), z.copy()
        self.tile_mean_sum, self.tile_std_sum, self.tiles = z.copy(), z.copy(), z.copy()

    def add(self, values: np.ndarray, valid: np.ndarray, channels: Sequence[int]) -> None:
        """``values``/``valid``: ``[len(channels), N]`` pixels of one tile for the given band indices."""
        for row, c in enumerate(channels):
            x = values[row][valid[row]]
            if x.size == 0:
                continue
            nb, mb = float(x.size), float(x.mean())
            m2b = float(((x - mb) ** 2).sum())
            self.tile_mean_sum[c] += mb
            self.tile_std_sum[c] += math.sqrt(m2b / nb)
            self.tiles[c] += 1
            n = self.n[c] + nb
            delta = mb - self.mean[c]
            self.mean[c] += delta * nb / n
            self.m2[c] += m2b + delta * delta * self.n[c] * nb / n
            self.n[c] = n

    def result(self) -> dict[str, Any]:
        seen = self.tiles > 0

        def listed(a: np.ndarray) -> list[float | None]:
            return [float(v) if s else None for v, s in zip(a, seen, strict=True)]

        with np.errstate(invalid="ignore", divide="ignore"):
            return {
                "global": {"mean": listed(self.mean), "std": listed(np.sqrt(self.m2 / self.n))},
                "per_tile": {"mean": listed(self.tile_mean_sum / self.tiles),
                             "std": listed(self.tile_std_sum / self.tiles)},
                "pixels": [int(v) for v in self.n], "tiles": [int(v) for v in self.tiles],
            }


def _pixels(sensor_name: str, item: TileSensor) -> tuple[np.ndarray, np.ndarray, list[int]]:
    sensor = get_sensor(sensor_name)
    data = item.data.astype(np.float64)
    c_axis = data.ndim - 3
    flat = np.moveaxis(data, c_axis, 0).reshape(data.shape[c_axis], -1)
    valid = ~np.isnan(flat)
    if item.nodata is not None and not math.isnan(item.nodata):
        valid &= flat != item.nodata
    return flat, valid, [sensor.bands.index(b) for b in (item.bands or sensor.bands)]


def compute_stats(root: str | os.PathLike[str], *, split: str | None = "train",
                  sensors: Sequence[str] | None = None, method: Method = "global") -> dict[str, Any]:
    """The ``stats.json`` document for the dataset at ``root`` (``split=None``: every tile)."""
    if method not in ("global", "per-tile"):
        raise ValueError(f"method: expected 'global' or 'per-tile', got {method!r}")
    root = Path(root)
    index = read_index(root)
    names = tuple(index.sensors if sensors is None else sensors)
    for s in names:
        if s not in index.sensors:
            raise ValueError(f"sensors: {s!r} is not in {root}'s sensors {list(index.sensors)}")
    tiles = [t for t in index.tiles if split is None or t.split == split]
    if not tiles:
        raise ValueError(f"{root}: no tiles in split {split!r}")
    acc = {s: BandAccumulator(get_sensor(s).channels) for s in names}
    for t in tiles:
        for s in names:
            if s in t.sensors:
                item = read_sensor_file(sensor_path(root, t.id, s), s, index.tile_size_m)
                acc[s].add(*_pixels(s, item))
    source = f"anysat stats over {index.name or root.name!r} ({split or 'all'} split, {len(tiles)} tiles)"
    out: dict[str, Any] = {}
    for s, a in acc.items():
        res = a.result()
        chosen = res["global" if method == "global" else "per_tile"]
        out[s] = {"bands": list(get_sensor(s).bands), "mean": chosen["mean"], "std": chosen["std"],
                  "source": f"{source}, {method}", **res}
    return {"format": STATS_FORMAT, "version": 1, "dataset": index.name, "split": split or "all",
            "method": method, "sensors": out}


def write_stats(doc: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(path)
    return path


def load_stats(path: str | os.PathLike[str]) -> dict[str, NormStats]:
    """Per-sensor ``NormStats`` from a ``stats.json`` (unobserved or constant bands: mean 0, std 1)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read statistics ({e})") from None
    ok = isinstance(doc, dict) and doc.get("format") == STATS_FORMAT and isinstance(doc.get("sensors"), dict)
    if not ok:
        raise ValueError(f"{path}: not an {STATS_FORMAT} file (field 'format' / 'sensors')")
    out: dict[str, NormStats] = {}
    for name, entry in doc["sensors"].items():
        sensor = get_sensor(name)
        mean, std = entry.get("mean"), entry.get("std")
        lists = isinstance(mean, list) and isinstance(std, list)
        if not (lists and len(mean) == len(std) == sensor.channels):
            raise ValueError(f"{path}: sensors.{name}: 'mean' and 'std' must be {sensor.channels} values "
                             f"(bands {list(sensor.bands)})")
        fixed = [i for i, (m, s) in enumerate(zip(mean, std, strict=True))
                 if m is None or s is None or s <= 0]
        source = str(entry.get("source", path))
        if fixed:
            source += f"; bands {[sensor.bands[i] for i in fixed]} unobserved or constant: left unscaled"
        out[name] = NormStats(
            mean=tuple(0.0 if i in fixed else float(m) for i, m in enumerate(mean)),
            std=tuple(1.0 if i in fixed else float(s) for i, s in enumerate(std)),
            source=source)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``anysat stats DATASET [--split train] [--method global|per-tile] [--out FILE] [--sensors ...]``."""
    parser = argparse.ArgumentParser(
        prog="anysat stats", description="Per-sensor, per-band normalisation statistics of a tile dataset.")
    parser.add_argument("dataset", type=Path, help="tile dataset directory (holds index.json)")
    parser.add_argument("--split", default="train", choices=["train", "val", "test", "all"],
                        help="tiles to use (default: train, so evaluation data never leaks in)")
    parser.add_argument("--method", default="global", choices=["global", "per-tile"],
                        help="which estimate becomes mean/std: true global (default) or the official "
                             "mean of per-tile means/stds; both are written")
    parser.add_argument("--sensors", nargs="+", help="only these sensors (default: all)")
    parser.add_argument("--out", type=Path, help=f"output file (default: DATASET/{STATS_FILE})")
    args = parser.parse_args(argv)
    try:
        doc = compute_stats(args.dataset, split=None if args.split == "all" else args.split,
                            sensors=args.sensors, method=args.method)
    except ValueError as e:
        print(f"anysat stats: error: {e}", file=sys.stderr)
        return 2
    path = write_stats(doc, args.out or args.dataset / STATS_FILE)
    for name, entry in doc["sensors"].items():
        print(f"{name}: " + ", ".join(
            f"{b}={m:.4g}±{s:.4g}" if m is not None else f"{b}=n/a"
            for b, m, s in zip(entry["bands"], entry["mean"], entry["std"], strict=True)))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
