"""Tile dataset format: writer -> reader round trip, validation errors, labels, collate padding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from model.sensors import NormStats, get_sensor
from training.data import LabelSpec, TileDataset, TileSensor, TileWriter, collate, read_index
from training.data.format import sensor_path

RNG = np.random.default_rng(0)


def s2(t: int, side: int = 6) -> TileSensor:
    data = RNG.uniform(0, 10000, (t, get_sensor("s2").channels, side, side)).astype(np.float32)
    return TileSensor(data, dates=np.sort(RNG.choice(np.arange(1, 367), t, replace=False)))


def aerial(side: int = 300) -> TileSensor:
    return TileSensor(RNG.integers(0, 256, (4, side, side), dtype=np.uint8))


def test_round_trip_and_collate_pads_series(tmp_path: Path) -> None:
    tiles = {"a": (s2(5), aerial()), "b": (s2(3), aerial())}
    with TileWriter(
        tmp_path, name="t", tile_size_m=60, sensors=["aerial", "s2"], label=LabelSpec("class", ("x", "y"))
    ) as w:
        for i, (tid, (ts, ae)) in enumerate(tiles.items()):
            w.add(tid, {"s2": ts, "aerial": ae}, split="train", label=i)
    ds = TileDataset(tmp_path)
    assert len(ds) == 2
    item = ds[0]
    assert item["aerial"].dtype == torch.float32 and item["aerial"].shape == (4, 300, 300)
    np.testing.assert_array_equal(item["aerial"].numpy(), tiles["a"][1].data.astype(np.float32))
    np.testing.assert_array_equal(item["s2"].numpy(), tiles["a"][0].data)
    assert item["s2_dates"].dtype == torch.int64 and item["label"].item() == 0

    batch = collate([ds[0], ds[1]])
    assert batch["id"] == ["a", "b"]
    assert batch["s2"].shape == (2, 5, 10, 6, 6) and batch["aerial"].shape == (2, 4, 300, 300)
    assert batch["s2_date_mask"].tolist() == [[True] * 5, [True] * 3 + [False] * 2]
    assert batch["s2_dates"][1, 3:].tolist() == [0, 0]
    assert batch["s2_dates"][1, :3].tolist() == tiles["b"][0].dates.tolist()
    assert torch.all(batch["s2"][1, 3:] == 0)
    assert batch["label"].tolist() == [0, 1]


def test_multilabel_mask_split_and_normalisation(tmp_path: Path) -> None:
    spec = LabelSpec("mask", ("water", "land"), nodata=-1, gsd=10.0)
    mask = np.array([[0, 1, -1]] * 3, np.int64)
    with TileWriter(tmp_path / "m", name="m", tile_size_m=30, sensors=["s2"], label=spec) as w:
        w.add("t0", {"s2": s2(2, side=3)}, split="val", label=mask)
        w.add("t1", {"s2": s2(2, side=3)}, split="train", label=mask)
    ds = TileDataset(tmp_path / "m", split="val")
    assert [t.id for t in ds.tiles] == ["t0"]
    assert ds[0]["label"].tolist() == mask.tolist()

    with TileWriter(
        tmp_path / "ml",
        name="ml",
        tile_size_m=60,
        sensors=["s2"],
        label=LabelSpec("multilabel", ("a", "b", "c")),
    ) as w:
        w.add("t", {"s2": s2(1)}, label=["c", "a"])
    stats = {"s2": NormStats(tuple(range(10)), (2.0,) * 10, "test")}
    ds = TileDataset(tmp_path / "ml", stats=stats)
    item = ds[0]
    assert item["label"].tolist() == [1.0, 0.0, 1.0]
    raw = TileDataset(tmp_path / "ml")[0]["s2"]
    expected = (raw - torch.arange(10.0).reshape(1, 10, 1, 1)) / 2.0
    torch.testing.assert_close(item["s2"], expected)


def test_band_subset_needs_fill(tmp_path: Path) -> None:
    l8 = TileSensor(np.ones((1, 3, 6, 6), np.uint16), dates=np.array([139]), bands=("B2", "B3", "B4"))
    with TileWriter(tmp_path, name="l8", tile_size_m=60, sensors=["l8"]) as w:
        w.add("t", {"l8": l8})
    with pytest.raises(ValueError, match=r"missing \['B8', 'B1'"):
        TileDataset(tmp_path)[0]
    x = TileDataset(tmp_path, missing_bands="fill", fill_value=-5.0)[0]["l8"]
    assert x.shape == (1, 11, 6, 6)
    names = get_sensor("l8").bands
    for i, b in enumerate(names):
        assert torch.all(x[:, i] == (1.0 if b in ("B2", "B3", "B4") else -5.0)), b


@pytest.mark.parametrize(
    ("sensors", "match"),
    [
        (
            {"s2": TileSensor(np.zeros((2, 10, 5, 6), np.float32), dates=np.array([1, 2]))},
            r"sensor 's2': 'data' has shape \[2, 10, 5, 6\], expected \[T, 10, 6, 6\]",
        ),
        (
            {"s2": TileSensor(np.zeros((2, 9, 6, 6), np.float32), dates=np.array([1, 2]))},
            r"expected \[T, 10, 6, 6\] \(T dates, 10 bands B2,B3",
        ),
        (
            {"s2": TileSensor(np.zeros((2, 10, 6, 6), np.float32), dates=np.array([0, 2]))},
            r"'dates' must be 1-based day of year",
        ),
        ({"s2": TileSensor(np.zeros((2, 10, 6, 6), np.float32))}, r"time series without 'dates'"),
        (
            {"aerial": TileSensor(np.zeros((4, 304, 304), np.uint8))},
            r"sensor 'aerial'.*expected \[4, 300, 300\]",
        ),
        ({"s1": TileSensor(np.zeros((1, 3, 6, 6)), dates=np.array([3]))}, r"sensors \['s1'\] not declared"),
    ],
)
def test_writer_rejects_bad_tiles(tmp_path: Path, sensors: dict[str, TileSensor], match: str) -> None:
    w = TileWriter(tmp_path, name="bad", tile_size_m=60, sensors=["aerial", "s2"])
    with pytest.raises(ValueError, match=match):
        w.add("t", sensors)


def test_reader_errors_name_the_file_and_field(tmp_path: Path) -> None:
    with TileWriter(tmp_path, name="x", tile_size_m=60, sensors=["s2"]) as w:
        w.add("t", {"s2": s2(2)})
    path = sensor_path(tmp_path, "t", "s2")
    meta = json.dumps({"sensor": "s2", "bands": list(get_sensor("s2").bands)})
    save_file(
        {"data": np.zeros((2, 10, 7, 7), np.float32), "dates": np.array([1, 2])},
        str(path),
        metadata={"anysat": meta},
    )
    with pytest.raises(ValueError, match=rf"{path}: sensor 's2': 'data' has shape \[2, 10, 7, 7\]"):
        TileDataset(tmp_path)[0]

    index = json.loads((tmp_path / "index.json").read_text())
    del index["tiles"][0]["split"]
    (tmp_path / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"index.json: missing field tiles\[0\].'split'"):
        read_index(tmp_path)
    index["tiles"][0]["split"] = "holdout"
    (tmp_path / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"tiles\[0\]: split: expected one of"):
        read_index(tmp_path)
    with pytest.raises(ValueError, match=r"tile_size_m: 50.1 m is not a whole number of aerial"):
        TileWriter(tmp_path / "y", name="y", tile_size_m=50.1, sensors=["aerial"])


def test_collate_rejects_mismatched_items() -> None:
    a = {"id": "a", "aerial": torch.zeros(4, 5, 5)}
    with pytest.raises(ValueError, match="different keys"):
        collate([a, {"id": "b"}])
    with pytest.raises(ValueError, match=r"'aerial' has different shapes"):
        collate([a, {"id": "b", "aerial": torch.zeros(4, 6, 6)}])
