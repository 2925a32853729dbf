"""Where tile results go: a blended raster (class map or embeddings, as COG) or one row per tile (GeoParquet).
Both are written as tile rows finish and checkpoint their state per tile row, for ``--resume``."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import pyarrow.parquet as pq

from model.sensors import SENSORS
from scene.blend import BlendState, StripBlender
from scene.cog import CogWriter, hex_colormap
from scene.geoparquet import TileRow, TileTableWriter
from scene.grid import Tile

if TYPE_CHECKING:
    from service.gateway.scenes.plan import ScenePlan

MASK_NODATA = 255


class Output(Protocol):
    def start_row(self, row: int) -> None: ...
    def add(self, tile: Tile, result: dict[str, np.ndarray], weight: np.ndarray, dates: tuple[dt.date, ...]
            ) -> None: ...
    def end_row(self, row: int) -> None: ...
    def finish(self) -> Path: ...
    def close(self) -> None: ...


def probabilities(logits: np.ndarray, multi_label: bool) -> np.ndarray:
    x = logits.astype(np.float64)
    if multi_label:
        return (1 / (1 + np.exp(-x))).astype(np.float32)
    e = np.exp(x - x.max(axis=0, keepdims=True))
    return (e / e.sum(axis=0, keepdims=True)).astype(np.float32)


def _tags(plan: ScenePlan) -> dict[str, str]:
    job = plan.job
    tags = {"anysat_output": job.output, "anysat_patch_size": str(plan.query.patch_size),
            "anysat_tile_size_m": f"{plan.grid.tile_m:g}", "anysat_overlap_m": f"{plan.grid.overlap_m:g}",
            "anysat_sensors": ",".join(job.sources),
            "anysat_dates": json.dumps({n: [d.isoformat() for d in s.dates] for n, s in job.sources.items()
                                        if SENSORS[n].time_series})}
    if job.head:
        tags["anysat_head"] = job.head
    if plan.mask and plan.head is not None:
        tags["classes"] = ",".join(plan.head.class_names)
        if plan.head.colours:
            tags["colours"] = ",".join(plan.head.colours)
    return tags


class RasterOutput:
    def __init__(self, plan: ScenePlan, state_dir: Path, resume: bool) -> None:
        self.plan, self.state_dir, self.resume = plan, state_dir, resume
        self.work, self.blend_file = state_dir / "work.tif", state_dir / "blend.npz"
        self.writer: CogWriter | None = None
        self.blender: StripBlender | None = None
        self.int8 = plan.job.embedding_dtype == "int8"
        if resume and self.blend_file.is_file():
            with np.load(self.blend_file) as saved:
                self._open(int(saved["acc"].shape[0]))
                assert self.blender is not None
                self.blender.restore(BlendState(int(saved["top"]), saved["acc"], saved["wsum"]))

    def _open(self, channels: int) -> None:
        plan, job = self.plan, self.plan.job
        height, width = plan.out_shape
        if plan.mask:
            assert plan.head is not None
            dtype, nodata, count = "uint8", float(MASK_NODATA), 1
            descriptions: list[str] = ["class"]
            colormap = hex_colormap(plan.head.colours) if plan.head.colours else None
        else:
            dtype = job.embedding_dtype
            nodata, count, colormap = (-128.0 if self.int8 else float("nan")), channels, None
            descriptions = [f"{job.output}_{i:03d}" for i in range(channels)]
        tags = _tags(plan)
        if self.int8:
            tags.update(embedding_scale=repr(job.int8_range / 127), embedding_offset="0")
        self.writer = CogWriter(job.out, crs=plan.grid.crs, transform=plan.out_transform, width=width, height=height,
                                count=count, dtype=dtype, nodata=nodata, work=self.work, descriptions=descriptions,
                                colormap=colormap, tags=tags, resume=self.resume)
        self.blender = StripBlender(self.writer, height=height, width=width, channels=channels,
                                    tile_px=plan.tile_out_px, mode="argmax" if plan.mask else "mean",
                                    nodata=nodata, dtype=dtype, encode=self._quantise if self.int8 else None)

    def _quantise(self, mean: np.ndarray, empty: np.ndarray) -> np.ndarray:
        r = self.plan.job.int8_range
        q = np.rint(np.clip(mean, -r, r) * (127 / r)).astype(np.int8)
        q[:, empty] = -128
        return q

    def _values(self, result: dict[str, np.ndarray]) -> np.ndarray:
        if self.plan.mask:
            assert self.plan.head is not None
            return probabilities(result["logits"], self.plan.head.multi_label)
        return np.moveaxis(result["embedding"], -1, 0).astype(np.float32)  # [h, w, C] -> [C, h, w]

    def _px(self) -> float:
        assert self.plan.out_px is not None
        return self.plan.out_px

    def start_row(self, row: int) -> None:
        if self.blender is not None:
            self.blender.start_row(round(self.plan.grid.offsets_y[row] / self._px()))

    def add(self, tile: Tile, result: dict[str, np.ndarray], weight: np.ndarray, dates: tuple[dt.date, ...]
            ) -> None:
        values = self._values(result)
        n = self.plan.tile_out_px
        if values.shape[1:] != (n, n):
            raise RuntimeError(f"tile {tile.id}: the model answered {list(values.shape)}, expected [C, {n}, {n}]")
        if self.blender is None:
            self._open(values.shape[0])
            assert self.blender is not None
            self.blender.start_row(round(tile.y0 / self._px()))
        px = self._px()
        self.blender.add(round(tile.y0 / px), round(tile.x0 / px), values, weight)

    def end_row(self, row: int) -> None:
        if self.blender is None or self.writer is None:
            return
        self.writer.checkpoint()
        state = self.blender.state()
        tmp = self.blend_file.with_name("blend.tmp.npz")
        np.savez(tmp, top=state.top, acc=state.acc, wsum=state.wsum)
        os.replace(tmp, self.blend_file)

    def finish(self) -> Path:
        if self.blender is None or self.writer is None:
            raise RuntimeError("no tile of the area had valid input data: nothing to write")
        self.blender.finish()
        return self.writer.finish()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class TableOutput:
    def __init__(self, plan: ScenePlan, state_dir: Path, resume: bool) -> None:
        self.plan = plan
        self.rows: list[TileRow] = []
        self.writer: TileTableWriter | None = None
        self.parts = state_dir / "parts"

    def start_row(self, row: int) -> None:
        self.rows = []

    def add(self, tile: Tile, result: dict[str, np.ndarray], weight: np.ndarray, dates: tuple[dt.date, ...]
            ) -> None:
        emb = np.asarray(result["embedding"], np.float32).reshape(-1)
        if self.writer is None:
            self.writer = TileTableWriter(self.plan.job.out, crs=self.plan.grid.crs, dim=emb.size, parts=self.parts,
                                          metadata={"anysat": json.dumps(_tags(self.plan))})
        # the time range of the dates this tile's series kept (a date without valid data there is not in it)
        self.rows.append(TileRow(tile.id, tile.row, tile.col, tile.bounds, emb, tuple(self.plan.job.sources),
                                 dates[0] if dates else None, dates[-1] if dates else None, float(weight.mean())))

    def end_row(self, row: int) -> None:
        if self.writer is not None:
            self.writer.write_row(row, self.rows)
        self.rows = []

    def finish(self) -> Path:
        if self.writer is None:
            done = sorted(self.parts.glob("row_*.parquet"))
            if not done:
                raise RuntimeError("no tile of the area had valid input data: nothing to write")
            # resumed with nothing left to add: the parts already written fix the embedding dimension
            dim = pq.read_schema(done[0]).field("embedding").type.list_size
            self.writer = TileTableWriter(self.plan.job.out, crs=self.plan.grid.crs, dim=dim, parts=self.parts,
                                          metadata={"anysat": json.dumps(_tags(self.plan))})
        return self.writer.finish()

    def close(self) -> None:
        pass
