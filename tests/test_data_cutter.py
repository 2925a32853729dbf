"""Tile cutter: rasters in different CRSs and resolutions cut into tiles aligned on the ground."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform, transform_bounds

from training.data import TileDataset, cut_tiles, read_index
from training.data.tilefile import read_sensor_file

UTM = CRS.from_epsg(32632)
E0, N0 = 500_000.0, 5_761_000.0  # UTM 32N at 9°E (its central meridian: no grid rotation), ~52°N
# The Landsat crop shipped with the repository (examples/data), found relative to this file.
LANDSAT = Path(__file__).resolve().parents[1] / "examples" / "data" / "landsat8" / "LC08_224078_20200518_crop512.tif"


def write(path: Path, data: np.ndarray, crs: CRS, tf: Affine, nodata: float | None = None) -> Path:
    count, height, width = data.shape
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=count,
        dtype=data.dtype,
        crs=crs,
        transform=tf,
        nodata=nodata,
    ) as dst:
        dst.write(data)
    return path


def coords_raster(crs: CRS, tf: Affine, width: int, height: int, bands: int) -> np.ndarray:
    """Bands 1, 2 hold the UTM easting/northing (minus E0, N0) of each pixel centre."""
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    xs, ys = tf.c + cols * tf.a, tf.f + rows * tf.e
    e, n = transform(crs, UTM, xs.ravel(), ys.ravel())
    out = np.zeros((bands, height, width), np.float32)
    out[0] = (np.asarray(e) - E0).reshape(height, width)
    out[1] = (np.asarray(n) - N0).reshape(height, width)
    return out


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("scene")
    s2_tf = Affine(10, 0, E0, 0, -10, N0)  # 400 m x 400 m at 10 m, UTM
    s2 = coords_raster(UTM, s2_tf, 40, 40, 10)
    s2_late = s2.copy()
    s2_late[:, 30:, 30:] = -9999  # the bottom-right 100 m tile is missing on the second date
    merc = CRS.from_epsg(3857)  # spot at ~1 m on the ground (1.6 web-mercator units at 52°N)
    left, bottom, right, top = transform_bounds(UTM, merc, E0 - 20, N0 - 420, E0 + 420, N0 + 20)
    res = 1.6
    w, h = int((right - left) / res), int((top - bottom) / res)
    spot_tf = Affine(res, 0, left, 0, -res, top)
    wgs = CRS.from_epsg(4326)  # labels in degrees: class 1 east of E0 + 200 m, nodata north of N0 - 50 m
    lleft, lbottom, lright, ltop = transform_bounds(UTM, wgs, E0 - 20, N0 - 420, E0 + 420, N0 + 20)
    lres = 1e-5
    lw, lh = int((lright - lleft) / lres), int((ltop - lbottom) / lres)
    label_tf = Affine(lres, 0, lleft, 0, -lres, ltop)
    c = coords_raster(wgs, label_tf, lw, lh, 2)
    labels = np.where(c[0] > 200, 1, 0).astype(np.uint8)
    labels[c[1] > -50] = 255
    return {
        "s2_a": write(d / "s2_a.tif", s2, UTM, s2_tf),
        "s2_b": write(d / "s2_b.tif", s2_late, UTM, s2_tf, nodata=-9999),
        "spot": write(d / "spot.tif", coords_raster(merc, spot_tf, w, h, 3), merc, spot_tf),
        "labels": write(d / "labels.tif", labels[None], wgs, label_tf, nodata=255),
    }


def pixel_centres(tf: tuple[float, ...], side: int) -> tuple[np.ndarray, np.ndarray]:
    a, _, c, _, e, f = tf
    cols, rows = np.meshgrid(np.arange(side) + 0.5, np.arange(side) + 0.5)
    return c + cols * a - E0, f + rows * e - N0


def test_tiles_align_across_crs_and_resolution(scene: dict[str, Path], tmp_path: Path) -> None:
    s2_dates = [(scene["s2_a"], "2020-03-01"), (scene["s2_b"], "2020-06-15")]
    out = cut_tiles(
        {"s2": s2_dates, "spot": scene["spot"]},
        tmp_path / "ds",
        tile_size_m=100,
        resampling="bilinear",
        labels=scene["labels"],
        classes=("west", "east"),
        max_nodata=0.0,
    )
    index = read_index(out)
    assert index.sensors == ("s2", "spot") and len(index.tiles) == 16  # 4 x 4 tiles of 100 m
    for t in index.tiles:
        for sensor, side, px in (("s2", 10, 10.0), ("spot", 100, 1.0)):
            item = read_sensor_file(out / "tiles" / t.id / f"{sensor}.safetensors", sensor, 100)
            assert item.georef is not None and CRS.from_wkt(item.georef.crs_wkt) == UTM
            x, y = pixel_centres(item.georef.transform, side)
            data = item.data[0] if sensor == "s2" else item.data
            # The value a pixel holds is the ground coordinate it came from: within half a pixel.
            assert np.abs(data[0] - x).max() < px / 2, (t.id, sensor)
            assert np.abs(data[1] - y).max() < px / 2, (t.id, sensor)
    tiles = {t.id: t for t in index.tiles}
    ds = TileDataset(out)
    items = {it["id"]: it for it in (ds[i] for i in range(len(ds)))}
    assert items["r0000_c0000"]["s2_dates"].tolist() == [61, 167]  # 1 March, 15 June 2020 (leap year)
    assert items["r0003_c0003"]["s2_dates"].tolist() == [61]  # the second date was nodata there: dropped
    mask = items["r0001_c0001"]["label"].numpy()  # 100 x 100 at the finest gsd (spot, 1 m)
    x, _ = pixel_centres((1.0, 0, E0 + 100, 0, -1.0, N0 - 100), 100)
    assert mask.shape == (100, 100)
    assert np.all(mask[np.abs(x - 200) > 2] == (x[np.abs(x - 200) > 2] > 200))
    top = items["r0000_c0000"]["label"].numpy()
    assert np.all(top[:45] == -1) and np.all(top[55:] == 0)  # north of N0 - 50 m: unlabelled
    assert tiles["r0000_c0000"].split == "train"


def test_nodata_threshold_skips_tiles(scene: dict[str, Path], tmp_path: Path) -> None:
    strict = cut_tiles({"s2": [(scene["s2_b"], "2020-06-15")]}, tmp_path / "a", tile_size_m=100)
    ids = {t.id for t in read_index(strict).tiles}
    assert "r0003_c0003" not in ids and len(ids) == 15
    loose = cut_tiles(
        {"s2": [(scene["s2_b"], "2020-06-15")]},
        tmp_path / "b",
        tile_size_m=100,
        max_nodata=1.0,
        split={"train": 0.5, "val": 0.5},
    )
    item = read_sensor_file(loose / "tiles" / "r0003_c0003" / "s2.safetensors", "s2", 100)
    assert item.nodata == -9999 and np.all(item.data == -9999)
    assert {t.split for t in read_index(loose).tiles} == {"train", "val"}


def test_cutter_errors(scene: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"rasters\['spot'\]: .* has 10 bands, expected 3; name its bands"):
        cut_tiles({"spot": scene["s2_a"]}, tmp_path / "x", tile_size_m=100)
    with pytest.raises(ValueError, match=r"rasters\['s2'\]: .* no YYYYMMDD date in the file name"):
        cut_tiles({"s2": [scene["s2_a"]]}, tmp_path / "x", tile_size_m=100)
    with pytest.raises(ValueError, match="is not a whole number of s2 pixels"):
        cut_tiles({"s2": [(scene["s2_a"], "2020-01-01")]}, tmp_path / "x", tile_size_m=105)
    with pytest.raises(ValueError, match="smaller than one 1000 m tile"):
        cut_tiles({"s2": [(scene["s2_a"], "2020-01-01")]}, tmp_path / "x", tile_size_m=1000)
    with pytest.raises(ValueError, match=r"bands\['l8'\]: \['B99'\] are not l8 bands"):
        cut_tiles({"l8": LANDSAT}, tmp_path / "x", tile_size_m=960, bands={"l8": ["B2", "B99", "B4"]})


def test_real_landsat_resampled_to_the_sensor_gsd(tmp_path: Path) -> None:
    with rasterio.open(LANDSAT) as src:
        left, top = src.bounds.left, src.bounds.top
        source = src.read(window=((0, 64), (0, 64)))
    # The file holds B2, B3, B4 of the 11 bands the table lists for l8; they are cut as such.
    out = cut_tiles(
        {"l8": LANDSAT},
        tmp_path / "l8",
        tile_size_m=960,
        bands={"l8": ["B2", "B3", "B4"]},
        bounds=(left, top - 1920, left + 1920, top),
    )
    index = read_index(out)
    assert [t.id for t in index.tiles] == ["r0000_c0000", "r0000_c0001", "r0001_c0000", "r0001_c0001"]
    item = read_sensor_file(out / "tiles" / "r0001_c0001" / "l8.safetensors", "l8", 960)
    assert item.data.shape == (1, 3, 96, 96) and item.data.dtype == np.uint16  # 30 m -> 10 m
    assert item.bands == ("B2", "B3", "B4") and item.dates.tolist() == [139]  # 18 May 2020, from the name
    assert item.georef.transform == (10.0, 0.0, left + 960, 0.0, -10.0, top - 960)
    expected = np.repeat(np.repeat(source[:, 32:64, 32:64], 3, axis=1), 3, axis=2)  # nearest: 3 x 3 copies
    np.testing.assert_array_equal(item.data[0], expected)
