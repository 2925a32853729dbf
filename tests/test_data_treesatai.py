"""The real TreeSatAI-TS tile, converted to the tile format and read back."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import rasterio
import torch
from rasterio.crs import CRS

from training.data import TileDataset, collate, convert_treesatai, read_index
from training.data.dates import parse_product_date
from training.data.tilefile import read_sensor_file
from training.data.treesatai import species_from_name

SRC = Path(__file__).resolve().parents[1] / "examples" / "data" / "treesatai-ts"
NAME = "Abies_alba_1_1005_WEFL_NLF"


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_treesatai(
        SRC, tmp_path_factory.mktemp("tsai"), split="test", sensors=("aerial", "s2", "s1-asc", "s1")
    )


def test_product_dates() -> None:
    s2 = b"S2A_MSIL2A_20200102T102421_N0213_R065_T32UNC_20200102T115419"  # h5py gives bytes
    s1 = "S1A_IW_GRDH_1SDV_20200103T170841_20200103T170906_030639_0382D5_360A"
    assert parse_product_date(s2) == dt.date(2020, 1, 2)
    assert parse_product_date(s1) == dt.date(2020, 1, 3)
    assert parse_product_date("LC08_224078_20200518_crop512.tif") == dt.date(2020, 5, 18)
    with pytest.raises(ValueError, match="no acquisition date"):
        parse_product_date("S2A_MSIL2A_N0213_R065")
    assert species_from_name(NAME + ".tif") == "Abies_alba"


def test_converted_tile_matches_source(converted: Path) -> None:
    index = read_index(converted)
    assert index.tile_size_m == 60 and index.label is not None and index.label.classes == ("Abies_alba",)
    assert [(t.id, t.split, t.label) for t in index.tiles] == [(NAME, "test", 0)]
    item = TileDataset(converted)[0]

    with rasterio.open(SRC / f"{NAME}.tif") as src:
        aerial = src.read()
        t = src.transform
        origin = (t.c + 2 * t.a, t.f + 2 * t.e)
    assert item["aerial"].shape == (4, 300, 300)
    np.testing.assert_array_equal(item["aerial"].numpy(), aerial[:, 2:302, 2:302].astype(np.float32))

    with h5py.File(SRC / f"{NAME}.h5") as h5:
        for sensor, key, t in (("s2", "sen-2", 146), ("s1-asc", "sen-1-asc", 60)):
            data, products = h5[f"{key}-data"][()], list(h5[f"{key}-products"][()])
            doy = np.array([parse_product_date(p).timetuple().tm_yday for p in products])
            order = np.argsort(doy, kind="stable")
            dates = item[f"{sensor}_dates"].numpy()
            assert item[sensor].shape == (t, data.shape[1], 6, 6)
            assert dates.min() >= 1 and dates.max() <= 366 and np.all(np.diff(dates) >= 0)
            np.testing.assert_array_equal(dates, doy[order])
            np.testing.assert_array_equal(item[sensor].numpy(), data[order])
        assert int(item["s2_dates"][0]) == 2  # 2 January 2020, 1-based
        vv, vh = h5["sen-1-asc-data"][:, 0], h5["sen-1-asc-data"][:, 1]
    assert item["s1"].shape == (60, 3, 6, 6)
    np.testing.assert_allclose(item["s1"][:, 2].numpy(), vv / (vh + 1e-10), rtol=1e-5)

    stored = read_sensor_file(converted / "tiles" / NAME / "aerial.safetensors", "aerial", 60)
    assert stored.georef is not None and CRS.from_wkt(stored.georef.crs_wkt).to_epsg() == 25832
    assert (stored.georef.transform[2], stored.georef.transform[5]) == pytest.approx(origin)
    assert stored.data.dtype == np.uint8

    batch = collate([item, item])
    assert batch["s2"].shape == (2, 146, 10, 6, 6) and bool(batch["s2_date_mask"].all())
    assert batch["label"].dtype == torch.int64


def test_split_lists_and_missing_h5(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "aerial").mkdir(parents=True)
    (src / "ts").mkdir()
    shutil.copy(SRC / f"{NAME}.tif", src / "aerial")
    shutil.copy(SRC / f"{NAME}.h5", src / "ts")
    (src / "val_filenames.lst").write_text(f"{NAME}.tif\n")
    out = convert_treesatai(src, tmp_path / "out", sensors=("aerial", "s2"))
    assert [t.split for t in read_index(out).tiles] == ["val"]
    (src / "ts" / f"{NAME}.h5").unlink()
    with pytest.raises(ValueError, match=r"1 tiles have no \.h5 time series"):
        convert_treesatai(src, tmp_path / "out2")
