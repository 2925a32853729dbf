"""``TileDataset``: streams an anysat tile dataset from disk as model-ready tensors, one tile per item."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from model.sensors import NormStats, get_sensor
from training.data.format import DatasetIndex, TileEntry, check_split, label_path, read_index, sensor_path
from training.data.tilefile import TileSensor, read_label_file, read_sensor_file

Item = dict[str, object]


class TileDataset(Dataset[Item]):
    """Items are dicts in the model's convention::

        {"id": str, "aerial": [C,H,W] float32, "s2": [T,C,H,W] float32, "s2_dates": [T] int64, ...,
         "label": int64 scalar | float32 [K] multi-hot | int64 [H,W] mask}

    ``split`` keeps one split (or several); ``sensors`` keeps a subset of the sensors (tiles lacking
    one of them raise, rather than silently producing batches the model cannot stack). ``stats``
    z-scores every band, ``(x - mean) / std``. A file holding only some of its sensor's bands raises
    unless ``missing_bands="fill"``, which inserts the absent bands as ``fill_value`` — after
    normalisation when ``stats`` is given, so the default 0.0 then means "the band's mean".
    """

    def __init__(self, root: str | os.PathLike[str], *, split: str | Sequence[str] | None = None,
                 sensors: Sequence[str] | None = None, stats: Mapping[str, NormStats] | None = None,
                 missing_bands: Literal["error", "fill"] = "error", fill_value: float = 0.0) -> None:
        self.root = Path(root)
        self.index: DatasetIndex = read_index(self.root)
        splits = None if split is None else {split} if isinstance(split, str) else set(split)
        for s in splits or ():
            check_split(s)
        self.sensors = tuple(self.index.sensors if sensors is None else sensors)
        for s in self.sensors:
            if s not in self.index.sensors:
                raise ValueError(f"sensors: {s!r} is not in {self.root}'s sensors {list(self.index.sensors)}")
            if stats is not None and s in stats and len(stats[s].mean) != get_sensor(s).channels:
                raise ValueError(f"stats[{s!r}]: {len(stats[s].mean)} values, sensor has "
                                 f"{get_sensor(s).channels} bands")
        if missing_bands not in ("error", "fill"):
            raise ValueError(f"missing_bands: expected 'error' or 'fill', got {missing_bands!r}")
        self.tiles: list[TileEntry] = [t for t in self.index.tiles if splits is None or t.split in splits]
        self.stats = dict(stats or {})
        self.missing_bands = missing_bands
        self.fill_value = fill_value

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, i: int) -> Item:
        tile = self.tiles[i]
        item: Item = {"id": tile.id}
        for name in self.sensors:
            if name not in tile.sensors:
                raise ValueError(f"tile {tile.id!r} has no {name!r} (it has {list(tile.sensors)}); "
                                 f"select sensors present in every tile")
            path = sensor_path(self.root, tile.id, name)
            stored = read_sensor_file(path, name, self.index.tile_size_m)
            item[name] = torch.from_numpy(self._to_model(name, stored, path))
            if stored.dates is not None:
                item[f"{name}_dates"] = torch.from_numpy(stored.dates.astype(np.int64))
        label = self._label(tile)
        if label is not None:
            item["label"] = label
        return item

    def _to_model(self, name: str, stored: TileSensor, path: Path) -> np.ndarray:
        sensor = get_sensor(name)
        data = stored.data.astype(np.float32)
        bands = stored.bands or sensor.bands
        stats = self.stats.get(name)
        if stats is not None:
            sel = [sensor.bands.index(b) for b in bands]
            shape = (-1, 1, 1)
            data = (data - np.asarray(stats.mean, np.float32)[sel].reshape(shape)) / np.asarray(
                stats.std, np.float32)[sel].reshape(shape)
        if bands == sensor.bands:
            return data
        if self.missing_bands == "error":
            missing = [b for b in sensor.bands if b not in bands]
            raise ValueError(f"{path}: sensor {name!r} holds bands {list(bands)}, the model expects "
                             f"{list(sensor.bands)} (missing {missing}); pass missing_bands='fill' "
                             f"to insert them")
        c_axis = data.ndim - 3
        full_shape = list(data.shape)
        full_shape[c_axis] = sensor.channels
        full = np.full(full_shape, self.fill_value, np.float32)
        idx = [sensor.bands.index(b) for b in bands]
        if c_axis == 0:
            full[idx] = data
        else:
            full[:, idx] = data
        return full

    def _label(self, tile: TileEntry) -> torch.Tensor | None:
        spec = self.index.label
        if spec is None:
            return None
        if spec.kind == "class":
            return torch.tensor(tile.label, dtype=torch.int64)
        if spec.kind == "multilabel":
            hot = torch.zeros(len(spec.classes), dtype=torch.float32)
            hot[list(tile.label)] = 1.0  # type: ignore[arg-type]
            return hot
        side = round(self.index.tile_size_m / spec.gsd)  # type: ignore[operator]
        mask, _ = read_label_file(label_path(self.root, tile.id), side)
        return torch.from_numpy(mask.astype(np.int64))
