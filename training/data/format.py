"""The anysat tile dataset format (version 1): one directory, one index, one file per tile and sensor.

Layout::

    <dataset>/
        index.json                       dataset header + one record per tile (below)
        stats.json                       optional: per-sensor band statistics (``anysat stats``)
        tiles/<tile_id>/<sensor>.safetensors   one per sensor present in the tile
        tiles/<tile_id>/label.safetensors      only for segmentation datasets (label kind "mask")

``index.json``::

    {
      "format": "anysat-tiles", "version": 1,
      "name": "treesatai-ts",               free text
      "tile_size_m": 60.0,                  ground side of every (square) tile, metres
      "sensors": ["aerial", "s1-asc", "s2"],   union of the sensors of all tiles (names of model.sensors)
      "label": null | {"kind": "class" | "multilabel" | "mask",
                       "classes": ["Abies_alba", ...],
                       "nodata": -1,        mask only: value of unlabelled pixels (ignored by losses)
                       "gsd": 10.0},        mask only: metres per mask pixel
      "tiles": [{"id": "Abies_alba_1_1005_WEFL_NLF", "split": "train" | "val" | "test",
                 "sensors": ["aerial", "s1-asc", "s2"],
                 "label": 0}, ...]          "class": a class index; "multilabel": a list of class
                                            indices; "mask": absent (the mask is in label.safetensors)
    }

Tile ids match ``[A-Za-z0-9][A-Za-z0-9._-]*``. The index holds metadata only (a few hundred bytes per
tile); the arrays are read one tile at a time.

``<sensor>.safetensors`` (no pickle anywhere) holds

* ``data``: the array in the model's layout and the sensor table's units, in its native dtype
  (uint8, uint16, float32, ...): ``[C, H, W]`` for a single-date sensor, ``[T, C, H, W]`` for a time
  series, with ``H = W = round(tile_size_m / gsd)`` at the sensor table's ``gsd`` (context sensors,
  i.e. MODIS: ``H = W = 1``) and ``C`` the sensor's bands in the table's order;
* ``dates`` (time series only): ``[T]`` int64, 1-based day of year (1 January = 1), one per date;

and one metadata entry ``"anysat"``, a JSON object with ``sensor``, ``bands`` (the band names stored,
in table order — a subset of the table's bands when the source lacked some), optional ``nodata``
(value of missing pixels), optional ``acquired`` (ISO dates, which keep the year that day-of-year
drops) and optional georeference ``crs`` (WKT) + ``transform`` (the 6 affine coefficients
``a, b, c, d, e, f`` of ``x = a*col + b*row + c``, ``y = d*col + e*row + f``, pixel corners).

``label.safetensors`` holds ``mask``: ``[H, W]`` int32 class indices at ``label.gsd``, with the same
optional georeference metadata.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from model.sensors import get_sensor

FORMAT = "anysat-tiles"
VERSION = 1
INDEX_FILE = "index.json"
STATS_FILE = "stats.json"
TILES_DIR = "tiles"
LABEL_FILE = "label.safetensors"
SPLITS = ("train", "val", "test")
LABEL_KINDS = ("class", "multilabel", "mask")

_TILE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

LabelKind = Literal["class", "multilabel", "mask"]


@dataclass(frozen=True)
class LabelSpec:
    kind: LabelKind
    classes: tuple[str, ...]
    nodata: int | None = None  # mask only
    gsd: float | None = None  # mask only

    def __post_init__(self) -> None:
        if self.kind not in LABEL_KINDS:
            raise ValueError(f"label.kind: expected one of {LABEL_KINDS}, got {self.kind!r}")
        if not self.classes:
            raise ValueError("label.classes: at least one class name is required")
        if self.kind == "mask" and (self.gsd is None or self.gsd <= 0):
            raise ValueError(f"label.gsd: a mask label needs a positive ground sampling distance, "
                             f"got {self.gsd}")

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "classes": list(self.classes), "nodata": self.nodata, "gsd": self.gsd}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> LabelSpec:
        return cls(kind=obj["kind"], classes=tuple(obj["classes"]), nodata=obj.get("nodata"),
                   gsd=None if obj.get("gsd") is None else float(obj["gsd"]))


@dataclass(frozen=True)
class TileEntry:
    id: str
    split: str
    sensors: tuple[str, ...]
    label: int | tuple[int, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"id": self.id, "split": self.split, "sensors": list(self.sensors)}
        if self.label is not None:
            obj["label"] = list(self.label) if isinstance(self.label, tuple) else self.label
        return obj


@dataclass
class DatasetIndex:
    name: str
    tile_size_m: float
    sensors: tuple[str, ...]
    label: LabelSpec | None = None
    tiles: list[TileEntry] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": VERSION, "name": self.name, "tile_size_m": self.tile_size_m,
            "sensors": list(self.sensors), "label": None if self.label is None else self.label.to_json(),
            "tiles": [t.to_json() for t in self.tiles],
        }


def check_tile_id(tile_id: str) -> str:
    if not isinstance(tile_id, str) or not _TILE_ID.match(tile_id):
        raise ValueError(f"tile id {tile_id!r}: expected letters, digits, '.', '_' or '-' "
                         f"(no path separators)")
    return tile_id


def check_split(split: str, where: str = "split") -> str:
    if split not in SPLITS:
        raise ValueError(f"{where}: expected one of {SPLITS}, got {split!r}")
    return split


def tile_dir(root: Path, tile_id: str) -> Path:
    return root / TILES_DIR / tile_id


def sensor_path(root: Path, tile_id: str, sensor: str) -> Path:
    return tile_dir(root, tile_id) / f"{sensor}.safetensors"


def label_path(root: Path, tile_id: str) -> Path:
    return tile_dir(root, tile_id) / LABEL_FILE


def read_index(root: str | os.PathLike[str]) -> DatasetIndex:
    """Parse and check ``<root>/index.json``; errors name the file and the offending field."""
    path = Path(root) / INDEX_FILE
    if not path.is_file():
        raise ValueError(f"{path}: no index file; is {root} an anysat tile dataset?")
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None

    def need(key: str, kind: type | tuple[type, ...], where: Mapping[str, Any] = obj, ctx: str = "") -> Any:
        if key not in where:
            raise ValueError(f"{path}: missing field {ctx}{key!r}")
        if not isinstance(where[key], kind):
            raise ValueError(f"{path}: field {ctx}{key!r} has type {type(where[key]).__name__}")
        return where[key]

    if obj.get("format") != FORMAT:
        raise ValueError(f"{path}: field 'format' must be {FORMAT!r}, got {obj.get('format')!r}")
    if obj.get("version") != VERSION:
        raise ValueError(f"{path}: field 'version': this reader understands {VERSION}, "
                         f"got {obj.get('version')!r}")
    sensors = tuple(need("sensors", list))
    for s in sensors:
        try:
            get_sensor(s)
        except ValueError as e:
            raise ValueError(f"{path}: field 'sensors': {e}") from None
    tile_size = float(need("tile_size_m", (int, float)))
    if tile_size <= 0:
        raise ValueError(f"{path}: field 'tile_size_m' must be positive, got {tile_size}")
    label = None
    if obj.get("label") is not None:
        try:
            label = LabelSpec.from_json(obj["label"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: field 'label': {e}") from None
    tiles = []
    for i, t in enumerate(need("tiles", list)):
        ctx = f"tiles[{i}]."
        tile_sensors = tuple(need("sensors", list, t, ctx))
        unknown = set(tile_sensors) - set(sensors)
        if unknown:
            raise ValueError(f"{path}: field {ctx}'sensors' lists {sorted(unknown)} "
                             f"not in the header's sensors")
        try:
            entry = TileEntry(check_tile_id(need("id", str, t, ctx)), check_split(need("split", str, t, ctx)),
                              tile_sensors, _label_value(t.get("label"), label))
        except ValueError as e:
            raise ValueError(f"{path}: {ctx[:-1]}: {e}") from None
        tiles.append(entry)
    return DatasetIndex(str(obj.get("name", "")), tile_size, sensors, label, tiles)


def _label_value(value: Any, spec: LabelSpec | None) -> int | tuple[int, ...] | None:
    if spec is None or spec.kind == "mask":
        if value is not None:
            raise ValueError("field 'label' given but the dataset's label kind has no per-tile value")
        return None
    return normalize_label(value, spec)


def normalize_label(value: Any, spec: LabelSpec) -> int | tuple[int, ...]:
    """A per-tile label as class index (or indices): accepts indices or class names."""
    def one(v: Any) -> int:
        if isinstance(v, str):
            if v not in spec.classes:
                raise ValueError(f"field 'label': unknown class {v!r}; classes are {list(spec.classes)}")
            return spec.classes.index(v)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < len(spec.classes):
            raise ValueError(f"field 'label': expected a class index in [0, {len(spec.classes)}), got {v!r}")
        return v

    if spec.kind == "class":
        return one(value)
    if isinstance(value, (str, int)) or not isinstance(value, Sequence):
        raise ValueError(f"field 'label': a multilabel dataset needs a list of classes, got {value!r}")
    return tuple(sorted({one(v) for v in value}))


def write_index(root: str | os.PathLike[str], index: DatasetIndex) -> Path:
    """Write ``index.json`` atomically, so a reader never sees half an index."""
    path = Path(root) / INDEX_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(index.to_json(), indent=1) + "\n")
    tmp.replace(path)
    return path
