"""Small synthetic tile datasets and a tiny encoder for the training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.data import TileSensor, TileWriter, compute_stats
from training.data.format import LabelSpec
from training.data.stats import write_stats

TINY = {"embed_dim": 64, "depth": 1, "num_heads": 2}  # 64: the narrowest a time-series tokenizer allows


def write_synthetic(root: Path, *, n_tiles: int = 6, modis: bool = False, labels: bool = False,
                    seed: int = 0) -> Path:
    """60 m tiles of s2 + s1-asc (+ modis), series of different lengths, class labels optional."""
    rng = np.random.default_rng(seed)
    sensors = ("s1-asc", "s2") + (("modis",) if modis else ())
    spec = LabelSpec("class", ("a", "b")) if labels else None
    with TileWriter(root, name=root.name, tile_size_m=60, sensors=sensors, label=spec) as w:
        for i in range(n_tiles):
            cls = i % 2
            t2, t1 = 3 + i % 3, 2 + i % 2
            items = {
                "s2": TileSensor((rng.normal(size=(t2, 10, 6, 6)) * 300 + 3000 + 800 * cls).astype(np.float32),
                                 dates=np.sort(rng.choice(np.arange(1, 366), t2, replace=False))),
                "s1-asc": TileSensor(rng.normal(size=(t1, 2, 6, 6)).astype(np.float32),
                                     dates=np.sort(rng.choice(np.arange(1, 366), t1, replace=False))),
            }
            if modis:
                items["modis"] = TileSensor(rng.normal(size=(4, 7, 1, 1)).astype(np.float32),
                                            dates=np.arange(1, 5) * 30)
            w.add(f"t{i}", items, split="train" if i < n_tiles - 2 else "val", label=cls if labels else None)
    write_stats(compute_stats(root, split=None), root / "stats.json")
    return root


CHANGE_NODATA = 255


def write_change_dataset(root: Path, *, n_train: int = 24, n_val: int = 8, classes: tuple[str, ...] = ("no-change",
                         "change"), dates: int = 6, seed: int = 0) -> Path:
    """60 m tiles of an s1-asc series (10 m, 6×6 px): inside one random rectangle per tile the backscatter
    jumps after the middle date, and the mask (10 m) marks that rectangle as class 1; each tile's first
    mask row is nodata in half the tiles (ignored by losses and metrics)."""
    rng = np.random.default_rng(seed)
    spec = LabelSpec("mask", classes, nodata=CHANGE_NODATA, gsd=10.0)
    with TileWriter(root, name=root.name, tile_size_m=60, sensors=("s1-asc",), label=spec) as w:
        for i in range(n_train + n_val):
            data = rng.normal(size=(dates, 2, 6, 6)).astype(np.float32)
            mask = np.zeros((6, 6), np.int32)
            h, wd = rng.integers(2, 4, size=2)
            r, c = rng.integers(0, 6 - h + 1), rng.integers(0, 6 - wd + 1)
            mask[r:r + h, c:c + wd] = 1
            data[dates // 2:, :, r:r + h, c:c + wd] += 4.0  # the change: a strong, lasting shift
            if i % 2:
                mask[0] = CHANGE_NODATA
            w.add(f"c{i}", {"s1-asc": TileSensor(data, dates=np.arange(1, dates + 1) * 30)},
                  split="train" if i < n_train else "val", label=mask)
    write_stats(compute_stats(root, split=None), root / "stats.json")
    return root


@pytest.fixture(scope="session")
def synthetic_datasets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("training-data")
    return (write_synthetic(base / "plain", labels=True),
            write_synthetic(base / "withmodis", modis=True, n_tiles=4, seed=1))
