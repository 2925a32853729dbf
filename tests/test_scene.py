"""The scene core without a model: grid, sources and their errors, blending, COG and GeoParquet writers."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform_bounds
from rio_cogeo.cogeo import cog_validate
from scene_fixtures import write

from scene import SceneError, SceneReader, TileGrid, parse_sources
from scene.blend import StripBlender, taper, window
from scene.cog import CogWriter, hex_colormap
from scene.geoparquet import TileRow, TileTableWriter

UTM = CRS.from_epsg(32632)
E0, N0 = 500_000.0, 5_761_000.0


def test_covering_grid_covers_the_area_with_overlap_and_snaps_the_last_tile() -> None:
    grid = TileGrid.covering(UTM, (E0, N0 - 1000, E0 + 1010, N0), tile_m=400, overlap_m=100, unit_m=20)
    assert grid.width_m == 1000  # floored to whole 20 m units
    assert grid.offsets_x == (0, 300, 600)  # the last one moved back to end at 1000 m
    assert grid.offsets_y == (0, 300, 600)
    tiles = list(grid.tiles())
    assert [t.id for t in tiles[:2]] == ["r0000_c0000", "r0000_c0001"]
    assert tiles[-1].bounds == (E0 + 600, N0 - 1000, E0 + 1000, N0 - 600)
    with pytest.raises(SceneError, match=r"tile_size: .*smaller than one 2000 m tile"):
        TileGrid.covering(UTM, (E0, N0 - 1000, E0 + 1000, N0), tile_m=2000, overlap_m=0, unit_m=20)
    with pytest.raises(SceneError, match="overlap: 30 m is not a whole number of 20 m patches"):
        TileGrid.covering(UTM, (E0, N0 - 1000, E0 + 1000, N0), tile_m=400, overlap_m=30, unit_m=20)


def test_taper_is_one_inside_and_smooth_across_the_overlap() -> None:
    w = taper(12, 3)
    assert (w[3:9] == 1).all() and (w[:3] < 1).all() and (w[:3] > 0).all()
    np.testing.assert_allclose(w, w[::-1])
    # two tiles overlapping by 3 px: their normalised weights hand over smoothly and sum to one
    assert (np.diff(w[:4]) > 0).all()
    assert (taper(5, 0) == 1).all()


def test_blender_writes_strips_in_raster_order_and_averages_overlaps() -> None:
    class Rows:
        def __init__(self) -> None:
            self.out = np.full((1, 6, 6), -1.0, np.float32)
            self.writes: list[tuple[int, int]] = []

        def write(self, row0: int, data: np.ndarray) -> None:
            self.writes.append((row0, data.shape[1]))
            self.out[:, row0:row0 + data.shape[1]] = data

    sink = Rows()
    b = StripBlender(sink, height=6, width=6, channels=1, tile_px=4, mode="mean")
    ones = np.ones((4, 4), np.float32)
    b.start_row(0)
    b.add(0, 0, np.full((1, 4, 4), 1.0, np.float32), ones)
    b.add(0, 2, np.full((1, 4, 4), 3.0, np.float32), ones)
    b.start_row(2)
    assert sink.writes == [(0, 2)]  # rows above the second tile row are final and written
    b.add(2, 0, np.full((1, 4, 4), 7.0, np.float32), ones)
    b.add(2, 2, np.full((1, 4, 4), 5.0, np.float32), ones * 0)  # no valid input: no weight
    b.finish()
    assert sink.writes == [(0, 2), (2, 4)]
    assert sink.out[0, 0].tolist() == [1, 1, 2, 2, 3, 3]
    np.testing.assert_allclose(sink.out[0, 2], [4, 4, 11 / 3, 11 / 3, 3, 3], rtol=1e-6)  # (1 + 7) / 2, (1 + 3 + 7) / 3
    assert np.isnan(sink.out[0, 5, 4:]).all()  # covered only by the tile without valid input: nodata


def test_cog_writer_writes_a_valid_cog_with_palette_crs_and_nodata(tmp_path: Path) -> None:
    tf = Affine(10, 0, E0, 0, -10, N0)
    out = tmp_path / "mask.tif"
    w = CogWriter(out, crs=UTM, transform=tf, width=700, height=600, count=1, dtype="uint8", nodata=255,
                  descriptions=["class"], colormap=hex_colormap(["#ff0000", "#00ff00"]), tags={"classes": "a,b"})
    for row0 in range(0, 600, 100):
        w.write(row0, np.full((1, 100, 700), row0 // 100 % 2, np.uint8))
    assert not out.exists()  # nothing at the output's name until it is complete
    w.finish()
    assert cog_validate(out, quiet=True)[0]
    with rasterio.open(out) as src:
        assert src.crs == UTM and src.transform == tf and src.nodata == 255
        assert src.colormap(1)[1] == (0, 255, 0, 255) and src.tags()["classes"] == "a,b"
        assert src.overviews(1) and src.compression.name == "deflate"
        assert (src.read(1)[150] == 1).all()
    assert not (tmp_path / "mask.tif.partial.tif").exists()


def test_geoparquet_rows_read_back_with_their_geometry(tmp_path: Path) -> None:
    grid = TileGrid.covering(UTM, (E0, N0 - 500, E0 + 700, N0), tile_m=300, overlap_m=100, unit_m=20)
    w = TileTableWriter(tmp_path / "t.parquet", crs=UTM, dim=4, parts=tmp_path / "parts")
    for row in range(grid.nrows):
        w.write_row(row, [TileRow(t.id, t.row, t.col, t.bounds, np.arange(4, dtype=np.float32) + t.col, ("s2",),
                                  dt.date(2020, 1, 2), dt.date(2020, 3, 4), 1.0)
                          for t in grid.tiles() if t.row == row])
    w.finish()
    table = pq.read_table(tmp_path / "t.parquet")
    assert table.num_rows == grid.n_tiles
    geo = table.schema.metadata[b"geo"]
    assert b'"primary_column": "geometry"' in geo and b"32632" in geo
    geoms = shapely.from_wkb(table.column("geometry").to_pylist())
    for tile, g in zip(grid.tiles(), geoms, strict=True):
        assert g.equals(shapely.box(*tile.bounds))
    assert table.column("embedding").to_pylist()[1] == [1.0, 2.0, 3.0, 4.0]


def test_reader_puts_every_sensor_on_the_same_ground(tmp_path: Path) -> None:
    """An s2 series at 10 m in UTM and an aerial image at ~0.3 m in web mercator: each tile's pixels, read at
    each sensor's own GSD, cover the same ground (checked with rasters whose values are their coordinates)."""
    tf = Affine(10, 0, E0, 0, -10, N0)
    cols, rows = np.meshgrid(np.arange(40) + 0.5, np.arange(40) + 0.5)
    s2 = np.zeros((10, 40, 40), np.float32)
    s2[0], s2[1] = cols * 10, rows * 10  # metres east / south of the corner
    a = write(tmp_path / "S2_20200105.tif", s2, UTM, tf)
    b = write(tmp_path / "S2_20200301.tif", s2 + 1, UTM, tf)
    sources = parse_sources({"s2": str(tmp_path / "S2_*.tif")})
    assert [f.dates for f in sources["s2"].files] == [(dt.date(2020, 1, 5),), (dt.date(2020, 3, 1),)]
    grid = TileGrid.covering(UTM, (E0, N0 - 400, E0 + 400, N0), tile_m=100, overlap_m=20, unit_m=20)
    with SceneReader(sources, grid) as reader:
        read = reader.read(grid.tile(1, 2))["s2"]
    assert read.data.shape == (2, 10, 10, 10) and read.valid.all()
    assert read.data[0, 0, 0, 0] == 160 + 5 and read.data[0, 1, 0, 0] == 80 + 5  # x0 = 160 m, y0 = 80 m
    assert read.data[1, 0, 0, 0] == 166
    assert a.exists() and b.exists()


def test_bad_sources_are_refused_naming_the_input(tmp_path: Path) -> None:
    tf = Affine(10, 0, E0, 0, -10, N0)
    three = write(tmp_path / "rgb_20200518.tif", np.zeros((3, 8, 8), np.uint16), UTM, tf)
    no_crs = write(tmp_path / "nocrs.tif", np.zeros((3, 8, 8), np.uint16), None, Affine.identity())
    with pytest.raises(SceneError, match=r"sensor.l8: .* has 3 bands, not a multiple of the 11 .*--bands l8="):
        parse_sources({"l8": str(three)})
    with pytest.raises(SceneError, match=r"sensor.l8: .*nocrs.tif has no CRS"):
        parse_sources({"l8": str(no_crs)}, bands={"l8": "B2,B3,B4"})
    with pytest.raises(SceneError, match=r"dates.l8: 2 dates given for 1 acquisitions"):
        parse_sources({"l8": str(three)}, {"l8": "2020-05-18,2020-06-01"}, {"l8": "B2,B3,B4"})
    undated = write(tmp_path / "rgb.tif", np.zeros((3, 8, 8), np.uint16), UTM, tf)
    with pytest.raises(SceneError, match=r"dates.l8: rgb.tif: no YYYYMMDD date in the file name"):
        parse_sources({"l8": [str(three), str(undated)]}, bands={"l8": "B2,B3,B4"})
    with pytest.raises(SceneError, match=r"bands.l8: \['B99'\] are not l8 bands"):
        parse_sources({"l8": str(three)}, bands={"l8": "B2,B99"})
    with pytest.raises(SceneError, match=r"sensor.l8: .*matches no file"):
        parse_sources({"l8": str(tmp_path / "none_*.tif")})
    with pytest.raises(SceneError, match=r"dates.aerial: aerial is a single-date sensor"):
        parse_sources({"aerial": str(three)}, {"aerial": "2020-01-01"})
    sources = parse_sources({"l8": str(three)}, {"l8": "2020-05-18"}, {"l8": "B4,B2,B3"})
    assert sources["l8"].bands == ("B4", "B2", "B3")


def test_blender_writes_nodata_strips_it_jumps_over() -> None:
    class Rows:
        def __init__(self) -> None:
            self.out = np.full((1, 10, 2), -1.0, np.float32)

        def write(self, row0: int, data: np.ndarray) -> None:
            self.out[:, row0:row0 + data.shape[1]] = data

    sink = Rows()
    b = StripBlender(sink, height=10, width=2, channels=1, tile_px=2)
    b.start_row(6)  # the first tile with valid data is three strips down
    b.add(6, 0, np.ones((1, 2, 2), np.float32), window(2, 0))
    b.finish()
    assert np.isnan(sink.out[0, :6]).all() and (sink.out[0, 6:8] == 1).all() and np.isnan(sink.out[0, 8:]).all()


def test_a_multi_band_series_file_and_a_band_subset_in_file_order(tmp_path: Path) -> None:
    """One file holding two dates x three l8 bands, in the file order B4, B2, B3: read as [T, C, n, n] in the
    sensor table's order (B2, B3, B4), dates as given, and a nodata value as validity per date."""
    tf = Affine(10, 0, E0, 0, -10, N0)
    data = np.zeros((6, 20, 20), np.float32)
    for t in range(2):
        for c, band in enumerate((4, 2, 3)):  # file order B4, B2, B3
            data[3 * t + c] = 100 * t + band
    data[3:, :5, :5] = -1  # the second date is missing in the top-left corner
    path = write(tmp_path / "series.tif", data, UTM, tf, nodata=-1)
    sources = parse_sources({"l8": str(path)}, {"l8": "2020-03-01,2020-02-01"}, {"l8": "B4,B2,B3"})
    grid = TileGrid.covering(UTM, (E0, N0 - 200, E0 + 200, N0), tile_m=100, overlap_m=0, unit_m=20)
    with SceneReader(sources, grid) as reader:
        read = reader.read(grid.tile(0, 0))["l8"]
    assert read.bands == ("B2", "B3", "B4")
    assert read.dates == (dt.date(2020, 2, 1), dt.date(2020, 3, 1))  # sorted by date: the file's second first
    assert read.data.shape == (2, 3, 10, 10)
    assert read.data[0, :, 9, 9].tolist() == [102, 103, 104] and read.data[1, :, 9, 9].tolist() == [2, 3, 4]
    assert not read.valid[0, 0, :5, :5].any() and read.valid[0, 0, 5:, 5:].all() and read.valid[1].all()


def test_a_cloud_mask_raster_marks_pixels_of_its_date_invalid(tmp_path: Path) -> None:
    """One valid-mask raster per file, in another CRS and resolution (web mercator, ~5 m): 0 = cloud."""
    tf = Affine(10, 0, E0, 0, -10, N0)
    a = write(tmp_path / "L8_20200105.tif", np.ones((3, 20, 20), np.uint16), UTM, tf)
    b = write(tmp_path / "L8_20200301.tif", np.ones((3, 20, 20), np.uint16), UTM, tf)
    merc = CRS.from_epsg(3857)
    left, bottom, right, top = transform_bounds(UTM, merc, E0 - 50, N0 - 250, E0 + 250, N0 + 50)
    res = 8.0
    w, h = int((right - left) / res), int((top - bottom) / res)
    cloud = np.ones((1, h, w), np.uint8)
    xs = left + (np.arange(w) + 0.5) * res
    cloud[0][:, xs > (left + right) / 2] = 0  # the eastern half is cloud on the first date
    ma = write(tmp_path / "mask_a.tif", cloud, merc, Affine(res, 0, left, 0, -res, top))
    mb = write(tmp_path / "mask_b.tif", np.ones((1, h, w), np.uint8), merc, Affine(res, 0, left, 0, -res, top))
    sources = parse_sources({"l8": [str(a), str(b)]}, bands={"l8": "B2,B3,B4"}, masks={"l8": [str(ma), str(mb)]})
    grid = TileGrid.covering(UTM, (E0, N0 - 200, E0 + 200, N0), tile_m=200, overlap_m=0, unit_m=20)
    with SceneReader(sources, grid) as reader:
        valid = reader.read(grid.tile(0, 0))["l8"].valid[:, 0]
    assert valid[1].all()
    assert valid[0][:, :5].all() and not valid[0][:, -5:].any()  # west clear, east cloud (the seam reprojected)
    with pytest.raises(SceneError, match=r"mask.l8: 1 mask files for 2 l8 files"):
        parse_sources({"l8": [str(a), str(b)]}, bands={"l8": "B2,B3,B4"}, masks={"l8": str(ma)})
