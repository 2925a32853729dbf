"""``anysat stats``: streaming statistics against numpy computed directly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model.sensors import get_sensor
from training.data import LabelSpec, TileSensor, TileWriter, load_stats
from training.data.stats import compute_stats, main


def test_stats_match_numpy(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    tiles = [rng.normal(100 * (i + 1), 10 * (i + 1), (i + 2, 10, 3, 3)).astype(np.float32) for i in range(3)]
    aerial = [rng.integers(0, 256, (4, 150, 150)).astype(np.uint8) for _ in range(3)]
    aerial[0][1, :5, :5] = 0  # nodata pixels, excluded from band B2 only
    with TileWriter(
        tmp_path, name="st", tile_size_m=30, sensors=["aerial", "s2"], label=LabelSpec("class", ("a",))
    ) as w:
        for i, (s2, ae) in enumerate(zip(tiles, aerial, strict=True)):
            w.add(
                f"t{i}",
                {
                    "s2": TileSensor(s2, dates=np.arange(1, len(s2) + 1)),
                    "aerial": TileSensor(ae, nodata=0 if i == 0 else None),
                },
                label=0,
            )
        held = {"s2": TileSensor(tiles[0] + 1e6, dates=np.arange(1, 3)), "aerial": TileSensor(aerial[1])}
        w.add("held", held, split="test", label=0)  # outside the train split: must not count

    doc = compute_stats(tmp_path)
    per_tile = [t.astype(np.float64).transpose(1, 0, 2, 3).reshape(10, -1) for t in tiles]
    all_px = np.concatenate(per_tile, axis=1)
    s2 = doc["sensors"]["s2"]
    np.testing.assert_allclose(s2["global"]["mean"], all_px.mean(1), rtol=1e-9)
    np.testing.assert_allclose(s2["global"]["std"], all_px.std(1), rtol=1e-9)
    np.testing.assert_allclose(s2["per_tile"]["mean"], np.mean([p.mean(1) for p in per_tile], 0), rtol=1e-9)
    np.testing.assert_allclose(s2["per_tile"]["std"], np.mean([p.std(1) for p in per_tile], 0), rtol=1e-9)
    assert s2["mean"] == s2["global"]["mean"] and s2["tiles"] == [3] * 10

    b2 = np.concatenate([aerial[0][1][aerial[0][1] != 0], aerial[1][1].ravel(), aerial[2][1].ravel()])
    ae = doc["sensors"]["aerial"]
    assert ae["global"]["mean"][1] == pytest.approx(b2.astype(np.float64).mean(), rel=1e-9)
    assert ae["pixels"][1] == b2.size

    assert main([str(tmp_path), "--method", "per-tile"]) == 0
    stats = load_stats(tmp_path / "stats.json")
    assert set(stats) == {"aerial", "s2"}
    np.testing.assert_allclose(stats["s2"].mean, s2["per_tile"]["mean"])
    assert len(stats["aerial"].std) == get_sensor("aerial").channels and "per-tile" in stats["s2"].source


def test_unobserved_bands_and_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with TileWriter(tmp_path, name="l8", tile_size_m=60, sensors=["l8"]) as w:
        w.add(
            "t",
            {
                "l8": TileSensor(
                    np.full((1, 3, 6, 6), 7, np.uint16), dates=np.array([139]), bands=("B2", "B3", "B4")
                )
            },
        )
    assert main([str(tmp_path), "--out", str(tmp_path / "s.json")]) == 0
    doc = json.loads((tmp_path / "s.json").read_text())
    assert doc["sensors"]["l8"]["mean"][:3] == [None, None, 7.0]
    stats = load_stats(tmp_path / "s.json")["l8"]
    assert stats.mean[0] == 0.0 and stats.std[0] == 1.0 and stats.std[2] == 1.0  # constant band: unscaled
    assert "left unscaled" in stats.source
    assert main([str(tmp_path), "--split", "val"]) == 2
    assert "no tiles in split 'val'" in capsys.readouterr().err
    bad = {"format": "anysat-stats", "sensors": {"s2": {"mean": [1]}}}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"sensors.s2: 'mean' and 'std' must be 10 values"):
        load_stats(tmp_path / "bad.json")
