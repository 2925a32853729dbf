"""GeoParquet (1.0) of tile vectors: one row per tile, its footprint polygon (WKB) in the grid's CRS, tile id,
time range, sensors and the embedding, as Clay and Major TOM publish embeddings.

Each tile row of the grid is written as its own part file as soon as it is done (a resumed run keeps those that
exist); ``finish`` streams the parts, in order, into one file at a temporary name and renames it into place."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rasterio.crs import CRS

from scene.grid import Bounds


@dataclass(frozen=True)
class TileRow:
    tile_id: str
    row: int
    col: int
    bounds: Bounds
    embedding: np.ndarray  # [D]
    sensors: tuple[str, ...]
    start: dt.date | None
    end: dt.date | None
    valid_fraction: float


def polygon_wkb(bounds: Bounds) -> bytes:
    """The box as a little-endian WKB polygon (one closed ring, counter-clockwise)."""
    left, bottom, right, top = bounds
    ring = [(left, bottom), (right, bottom), (right, top), (left, top), (left, bottom)]
    return struct.pack("<BIII", 1, 3, 1, len(ring)) + b"".join(struct.pack("<dd", x, y) for x, y in ring)


class TileTableWriter:
    def __init__(self, path: str | os.PathLike[str], *, crs: CRS, dim: int, parts: str | os.PathLike[str],
                 metadata: dict[str, str] | None = None) -> None:
        self.path, self.parts, self.crs, self.dim = Path(path), Path(parts), crs, dim
        self.parts.mkdir(parents=True, exist_ok=True)
        self.metadata = dict(metadata or {})
        self.schema = pa.schema([
            ("tile_id", pa.string()), ("row", pa.int32()), ("col", pa.int32()), ("geometry", pa.binary()),
            ("start_date", pa.date32()), ("end_date", pa.date32()), ("sensors", pa.list_(pa.string())),
            ("valid_fraction", pa.float32()), ("embedding", pa.list_(pa.float32(), dim)),
        ])

    def done_rows(self) -> set[int]:
        return {int(p.stem.split("_")[1]) for p in self.parts.glob("row_*.parquet")}

    def write_row(self, tile_row: int, rows: Sequence[TileRow]) -> None:
        """All tiles of grid row ``tile_row`` (an empty list when every tile there had no valid data)."""
        emb = np.stack([r.embedding.astype(np.float32) for r in rows]) if rows else np.zeros((0, self.dim), np.float32)
        table = pa.table({
            "tile_id": [r.tile_id for r in rows], "row": [r.row for r in rows], "col": [r.col for r in rows],
            "geometry": [polygon_wkb(r.bounds) for r in rows], "start_date": [r.start for r in rows],
            "end_date": [r.end for r in rows], "sensors": [list(r.sensors) for r in rows],
            "valid_fraction": [r.valid_fraction for r in rows],
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), self.dim),
        }, schema=self.schema)
        part = self.parts / f"row_{tile_row:06d}.parquet"
        tmp = part.with_suffix(".tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, part)

    def _geo(self, bbox: list[float]) -> str:
        return json.dumps({"version": "1.0.0", "primary_column": "geometry", "columns": {"geometry": {
            "encoding": "WKB", "geometry_types": ["Polygon"], "crs": self.crs.to_dict(projjson=True), "bbox": bbox}}})

    def finish(self) -> Path:
        parts = sorted(self.parts.glob("row_*.parquet"))
        bbox = [np.inf, np.inf, -np.inf, -np.inf]
        for p in parts:  # the bbox first (geo metadata goes in the footer's schema, written at open)
            t = pq.read_table(p, columns=["geometry"])
            for g in t.column("geometry").to_pylist():
                xs, ys = np.frombuffer(g[13:], "<f8")[0::2], np.frombuffer(g[13:], "<f8")[1::2]
                bbox = [min(bbox[0], xs.min()), min(bbox[1], ys.min()), max(bbox[2], xs.max()), max(bbox[3], ys.max())]
        meta = {b"geo": self._geo([float(v) for v in bbox] if np.isfinite(bbox).all() else []).encode()}
        meta.update({k.encode(): v.encode() for k, v in self.metadata.items()})
        tmp = self.path.with_name(self.path.name + ".tmp")
        with pq.ParquetWriter(tmp, self.schema.with_metadata(meta)) as writer:
            for p in parts:
                table = pq.read_table(p, schema=self.schema)
                if table.num_rows:
                    writer.write_table(table)
        os.replace(tmp, self.path)
        shutil.rmtree(self.parts, ignore_errors=True)
        return self.path
