"""Small synthetic tile datasets and a tiny encoder for the training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.data import TileSensor, TileWriter, compute_stats
from training.data.format import LabelSpec
from training.data.stats import write_stats

TINY = {"embed_dim": 32, "depth": 1, "num_heads": 2}


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


@pytest.fixture(scope="session")
def synthetic_datasets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("training-data")
    return (write_synthetic(base / "plain", labels=True),
            write_synthetic(base / "withmodis", modis=True, n_tiles=4, seed=1))
