"""``anysat train probe --raster scene.tif --sensor l8 --labels polygons.gpkg --field name``.

Rasterise the labelled polygons onto the raster, cut labelled tiles (train / val by tile), compute the
normalisation statistics on the training tiles, fit a segmentation head on frozen dense features and
report held-out pixel accuracy; the head is written in the format the gateway serves at ``/v1/masks``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from model.sensors import get_sensor
from training.config import DownstreamConfig, EncoderSpec
from training.data import compute_stats, cut_tiles
from training.data.dates import parse_product_date
from training.data.stats import write_stats
from training.downstream.train import run_downstream
from training.downstream.vector import NODATA, rasterize_labels


def labelled_area_split(label_tif: str | Path, tile_size_m: float, val_fraction: float
                        ) -> tuple[tuple[float, float, float, float], Callable[[int, int], str]]:
    """The tile-aligned box around the labelled pixels (only tiles there can be used), and a held-out
    split by class: each class's tiles (by majority label) in raster order, the last ``val_fraction`` of
    them (at least one, when the class has two or more) go to "val" — a spatially separate block per
    class rather than tiles scattered among the training ones."""
    with rasterio.open(label_tif) as src:
        mask, t = src.read(1), src.transform
    px = round(tile_size_m / t.a)
    rows, cols = np.nonzero(mask != NODATA)
    if rows.size == 0:
        raise ValueError(f"{label_tif}: no polygon falls on the raster")
    r0, r1, c0, c1 = rows.min() // px, rows.max() // px, cols.min() // px, cols.max() // px
    bounds = (t.c + c0 * tile_size_m, t.f - (r1 + 1) * tile_size_m, t.c + (c1 + 1) * tile_size_m,
              t.f - r0 * tile_size_m)
    by_class: dict[int, list[tuple[int, int]]] = {}
    for r in range(r1 - r0 + 1):
        for c in range(c1 - c0 + 1):
            block = mask[(r0 + r) * px:(r0 + r + 1) * px, (c0 + c) * px:(c0 + c + 1) * px]
            labelled = block[block != NODATA]
            if labelled.size:
                by_class.setdefault(int(np.bincount(labelled).argmax()), []).append((r, c))
    held_out = set()
    for cells in by_class.values():
        if len(cells) >= 2:
            held_out.update(cells[len(cells) - max(1, round(val_fraction * len(cells))):])
    return bounds, lambda row, col: "val" if (row, col) in held_out else "train"


def probe_raster(*, raster: str | Path, sensor: str, labels: str | Path, field: str, encoder: EncoderSpec,
                 out_dir: str | Path, bands: Sequence[str] | None = None, date: str | None = None,
                 classes: Sequence[str] | None = None, tile_size_m: float = 120.0, patch_size: int = 20,
                 val_fraction: float = 0.3, min_labelled: float = 0.02, epochs: int = 100, lr: float = 1e-2,
                 batch_size: int = 16, seed: int = 0, colours: Sequence[str] = (), head_path: str | Path | None = None,
                 feature_baseline: str | None = None, command: str = "") -> dict[str, Any]:
    s = get_sensor(sensor)
    out = Path(out_dir)
    label_tif, class_list, counts = rasterize_labels(labels, raster, field, out / "labels.tif", gsd=s.gsd,
                                                     classes=classes)
    print(f"rasterised {labels}: labelled pixels per class {counts}", file=sys.stderr)
    source: Any = raster
    if s.time_series:
        acquired = date or parse_product_date(Path(raster).name).isoformat()
        source = [(raster, acquired)]
    bounds, split = labelled_area_split(label_tif, tile_size_m, val_fraction)
    tiles = cut_tiles({sensor: source}, out / "tiles", tile_size_m=tile_size_m, bounds=bounds,
                      bands={sensor: list(bands)} if bands else None, labels=label_tif, classes=class_list,
                      min_labelled=min_labelled, split=split, seed=seed, name=f"{Path(raster).stem}-labels",
                      overwrite=True)
    write_stats(compute_stats(tiles, split="train"), tiles / "stats.json")
    cfg = DownstreamConfig(encoder=encoder, dataset=str(tiles), task="segmentation", freeze_encoder=True,
                           patch_size=patch_size, output_modality=sensor,
                           missing_bands="fill" if bands and len(bands) < s.channels else "error",
                           epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, out_dir=str(out),
                           head_path=None if head_path is None else str(head_path), class_colours=tuple(colours))
    result = run_downstream(cfg, command=command, feature_baseline=feature_baseline)
    result["labelled_pixels"] = counts
    m = result["metrics"]
    print(f"held-out pixel accuracy {m['oa']:.4f} (mIoU {m['miou']:.4f}, F1 macro {m['f1_macro']:.4f}) "
          f"on {m['support']} pixels per class {list(class_list)}", file=sys.stderr)
    return result
