"""Creating tile datasets: ``TileWriter`` validates each tile against the sensor table and writes it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from model.sensors import get_sensor
from training.data.format import (
    INDEX_FILE,
    DatasetIndex,
    LabelSpec,
    TileEntry,
    check_split,
    check_tile_id,
    label_path,
    normalize_label,
    sensor_path,
    write_index,
)
from training.data.tilefile import Georef, TileSensor, expected_side, write_label_file, write_sensor_file


class TileWriter:
    """Writes an anysat tile dataset one tile at a time; ``close()`` (or leaving ``with``) writes the index.

    Only the per-tile index records stay in memory, so datasets of any size can be written.
    """

    def __init__(self, root: str | os.PathLike[str], *, name: str, tile_size_m: float,
                 sensors: Sequence[str], label: LabelSpec | None = None, overwrite: bool = False) -> None:
        self.root = Path(root)
        if (self.root / INDEX_FILE).exists():
            if not overwrite:
                raise ValueError(f"{self.root}: already holds a dataset (pass overwrite=True to replace it)")
            shutil.rmtree(self.root)
        for s in sensors:
            expected_side(get_sensor(s), tile_size_m)  # fail now, not at the first tile
        if label is not None and label.kind == "mask":
            self._mask_side = round(tile_size_m / label.gsd)  # type: ignore[operator]
            if abs(tile_size_m / label.gsd - self._mask_side) > 1e-6:  # type: ignore[operator]
                raise ValueError(f"label.gsd {label.gsd} m does not divide the tile size {tile_size_m} m")
        self.root.mkdir(parents=True, exist_ok=True)
        self.index = DatasetIndex(name=name, tile_size_m=float(tile_size_m), sensors=tuple(sensors),
                                  label=label)
        self._ids: set[str] = set()
        self._closed = False

    def add(self, tile_id: str, sensors: Mapping[str, TileSensor], *, split: str = "train",
            label: Any = None, label_georef: Georef | None = None) -> None:
        """Write one tile. ``label``: a class index or name ("class"), a list of them ("multilabel"),
        or an ``[H, W]`` integer array at ``label.gsd`` ("mask")."""
        if self._closed:
            raise ValueError("TileWriter is closed")
        check_tile_id(tile_id)
        check_split(split, f"tile {tile_id!r}: split")
        if tile_id in self._ids:
            raise ValueError(f"tile {tile_id!r}: id already written")
        if not sensors:
            raise ValueError(f"tile {tile_id!r}: no sensors")
        extra = set(sensors) - set(self.index.sensors)
        if extra:
            raise ValueError(f"tile {tile_id!r}: sensors {sorted(extra)} not declared for this dataset "
                             f"({list(self.index.sensors)})")
        tile_label = self._check_label(tile_id, label)
        for name, item in sensors.items():
            write_sensor_file(sensor_path(self.root, tile_id, name), name, item, self.index.tile_size_m)
        if self.index.label is not None and self.index.label.kind == "mask":
            write_label_file(label_path(self.root, tile_id), np.asarray(label), label_georef)
        present = tuple(s for s in self.index.sensors if s in sensors)
        self.index.tiles.append(TileEntry(tile_id, split, present, tile_label))
        self._ids.add(tile_id)

    def _check_label(self, tile_id: str, label: Any) -> int | tuple[int, ...] | None:
        spec = self.index.label
        where = f"tile {tile_id!r}: label"
        if spec is None:
            if label is not None:
                raise ValueError(f"{where}: given, but the dataset was created without a LabelSpec")
            return None
        if label is None:
            raise ValueError(f"{where}: missing (the dataset's label kind is {spec.kind!r})")
        if spec.kind != "mask":
            try:
                return normalize_label(label, spec)
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
        mask = np.asarray(label)
        side = self._mask_side
        if mask.shape != (side, side) or mask.dtype.kind not in "iu":
            raise ValueError(f"{where}: mask must be [{side}, {side}] integers, "
                             f"got {list(mask.shape)} {mask.dtype}")
        valid = mask != spec.nodata if spec.nodata is not None else np.ones(mask.shape, bool)
        if valid.any() and (mask[valid].min() < 0 or mask[valid].max() >= len(spec.classes)):
            raise ValueError(f"{where}: mask values must be class indices in [0, {len(spec.classes)}) "
                             f"or nodata {spec.nodata}, got [{mask[valid].min()}, {mask[valid].max()}]")
        return None

    def close(self) -> Path:
        """Write ``index.json`` and return its path."""
        self._closed = True
        return write_index(self.root, self.index)

    def __enter__(self) -> TileWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # Index even after an error: the tiles written so far are valid and the index says which.
        self.close()
