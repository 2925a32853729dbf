"""Overlapping tiles merged with smooth weights, strip by strip in raster order, so memory is one strip.

Each tile's values are weighted by a tapered window (a cosine ramp across the overlap, 1 inside it), times its
validity, and the output is ``sum(w * v) / sum(w)``: a pixel only one tile covers gets exactly that tile's value,
and across a border the weights hand over smoothly, so no seam shows where one tile's context ends. Masks blend
class probabilities and take the argmax. Tiles of one tile row share their top edge, so when the next row
starts every output row above its top is final: it is written out (``Sink.write``) and dropped from memory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

_FLOOR = 1e-3  # a window is never 0: the area's outermost pixels, covered by one tile only, still get a value


def taper(n: int, ramp: float) -> np.ndarray:
    """``[n]`` weights: 0.5 - 0.5 cos(pi d / ramp) at distance ``d`` (pixel centres) from the nearer edge within
    ``ramp`` pixels, 1 beyond; all ones for ``ramp`` 0."""
    if ramp <= 0:
        return np.ones(n, np.float32)
    d = np.minimum(np.arange(n), np.arange(n)[::-1]) + 0.5
    w = np.where(d < ramp, 0.5 - 0.5 * np.cos(np.pi * d / ramp), 1.0)
    return np.maximum(w, _FLOOR).astype(np.float32)


def window(n: int, ramp: float) -> np.ndarray:
    """``[n, n]`` tile weights (the outer product of two tapers)."""
    t = taper(n, ramp)
    return np.outer(t, t)


class Sink(Protocol):
    def write(self, row0: int, data: np.ndarray) -> None:
        """Rows ``row0 .. row0 + data.shape[1]`` of the output, ``[bands, rows, width]``, final."""


@dataclass
class BlendState:
    """What resuming needs: the rows not yet written (their partial sums) and where they start."""

    top: int
    acc: np.ndarray
    wsum: np.ndarray


class StripBlender:
    """``mode="mean"``: ``channels`` bands averaged, written as ``dtype`` with ``nodata`` where no tile had a valid
    value; ``mode="argmax"``: ``channels`` class probabilities averaged, written as one uint8 band of the most
    probable class (``nodata`` where none). ``tile_px``: the tile side in output pixels (every tile's)."""

    def __init__(self, sink: Sink, *, height: int, width: int, channels: int, tile_px: int, mode: str = "mean",
                 nodata: float = np.nan, dtype: str = "float32", encode: object = None) -> None:
        if mode not in ("mean", "argmax"):
            raise ValueError(f"mode: mean or argmax, got {mode!r}")
        self.sink, self.height, self.width, self.channels = sink, height, width, channels
        self.tile_px, self.mode, self.nodata, self.dtype = tile_px, mode, nodata, np.dtype(dtype)
        self.encode = encode  # optional callable: float values [C, r, W] -> stored array (int8 quantisation)
        self.top = 0
        self.acc = np.zeros((channels, tile_px, width), np.float32)
        self.wsum = np.zeros((tile_px, width), np.float32)

    def state(self) -> BlendState:
        return BlendState(self.top, self.acc, self.wsum)

    def restore(self, state: BlendState) -> None:
        if state.acc.shape != self.acc.shape:
            raise ValueError(f"resume: saved blend state {state.acc.shape} does not fit this job's {self.acc.shape}")
        self.top, self.acc[...], self.wsum[...] = state.top, state.acc, state.wsum

    def start_row(self, row0: int) -> None:
        """The next tile row begins at output row ``row0``: rows above it are final and written out."""
        if row0 < self.top:
            raise ValueError(f"tile rows must come top to bottom: row {row0} after {self.top}")
        while self.top < row0:  # a jump past whole strips (rows of skipped tiles) writes them out as nodata
            self._flush(min(row0 - self.top, self.tile_px))

    def add(self, row0: int, col0: int, values: np.ndarray, weight: np.ndarray) -> None:
        """One tile: ``values`` ``[C, n, n]`` at output pixel ``(row0, col0)``, ``weight`` ``[n, n]`` (0 = no
        valid input there)."""
        _, n, m = values.shape
        r = row0 - self.top
        if r < 0 or r + n > self.tile_px:
            raise ValueError(f"tile at row {row0} outside the current strip (rows {self.top}..)")
        self.acc[:, r:r + n, col0:col0 + m] += values * weight
        self.wsum[r:r + n, col0:col0 + m] += weight

    def finish(self) -> None:
        while self.top < self.height:  # rows below the last tile (if any) are nodata
            self._flush(min(self.tile_px, self.height - self.top))

    def _flush(self, rows: int) -> None:
        acc, wsum = self.acc[:, :rows], self.wsum[:rows]
        empty = wsum <= 0
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = acc / np.where(empty, 1.0, wsum)
        if self.mode == "argmax":
            out = mean.argmax(axis=0).astype(self.dtype)[None]
            out[0][empty] = self.nodata
        elif self.encode is not None:
            out = self.encode(mean, empty)  # type: ignore[operator]
        else:
            out = mean.astype(self.dtype)
            out[:, empty] = self.nodata
        self.sink.write(self.top, out)
        keep = self.tile_px - rows
        self.acc[:, :keep] = self.acc[:, rows:]
        self.wsum[:keep] = self.wsum[rows:]
        self.acc[:, keep:] = 0
        self.wsum[keep:] = 0
        self.top += rows
