"""Scene inference end to end with the demo encoder and head on the shipped Landsat 8 crop: blending (an
interior pixel equals the single-tile result; no seam across tile borders), outputs (mask COG, embedding COG,
GeoParquet), skipped nodata tiles, resume, and the bad inputs refused before any work."""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import rasterio.dtypes
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from rio_cogeo.cogeo import cog_validate
from scene_fixtures import CHECKPOINT, HEADS, LANDSAT, REPO, l8_bbox, write

from scene import SceneError, SceneLimitError, parse_sources
from service.gateway.inputs.tile import SensorInput
from service.gateway.prepare import prepare_tile
from service.gateway.scenes import InProcessExecutor, SceneJob, SceneLimits, TileRequest, plan_scene, run_scene
from service.gateway.scenes.cli import main as predict_main
from service.runtime.runner import ModelRunner

sys.path.insert(0, str(REPO / "examples"))
from landsat_l8_tile import l8_tile


@pytest.fixture(scope="module")
def runner() -> ModelRunner:
    return ModelRunner.from_checkpoint(CHECKPOINT, heads_dir=HEADS)


def l8_job(out: Path, bbox: tuple[float, float, float, float], **kw: object) -> SceneJob:
    sources = parse_sources({"l8": str(LANDSAT)}, {"l8": "2020-05-18"}, {"l8": "B2,B3,B4"})
    return SceneJob(sources, out, bbox=bbox, **kw)  # type: ignore[arg-type]


def run(runner: ModelRunner, job: SceneJob, **kw: object) -> Path:
    plan = plan_scene(job, checkpoint=CHECKPOINT, heads_dir=HEADS)
    return run_scene(plan, InProcessExecutor(runner), **kw).out  # type: ignore[arg-type]


def test_interior_pixel_equals_the_single_tile_result(runner: ModelRunner, tmp_path: Path) -> None:
    """3 x 3 tiles of 240 m overlapping by 60 m. Tile (1, 1)'s inner patches are covered by it alone, so the
    blended output there is that tile's embedding, computed here independently: the tile cut from the crop by
    the shipped example (30 m pixels repeated 3 x 3, absent bands 0), prepared as the gateway does."""
    col, row = 200, 150
    job = l8_job(tmp_path / "emb.tif", l8_bbox(col, row, 600, 600), output="patch", head="landcover",
                 tile_size_m=240, overlap_m=60)
    out = run(runner, job, batch_size=4)
    with rasterio.open(out) as src:
        emb = src.read()  # [64, 30, 30] at 20 m
    tile = l8_tile(tmp_path / "t.tif", col=col + 6, row=row + 6, size=8)  # tile (1, 1) starts 180 m in
    with rasterio.open(tile) as src:
        data = src.read()[None]
    plan = plan_scene(job, checkpoint=CHECKPOINT, heads_dir=HEADS)
    prepared = prepare_tile({"l8": SensorInput("l8", data, dates=np.asarray([139]))}, plan.query, plan.settings, "t")
    alone = runner.run(prepared.config.key(), [prepared.tensors])[0]["embedding"]  # [12, 12, 64]
    inner = slice(3, 9)  # the 60 m overlap is 3 patches on each side
    got = emb[:, 9 + 3:9 + 9, 9 + 3:9 + 9]
    np.testing.assert_allclose(got, np.moveaxis(alone[inner, inner], -1, 0), rtol=1e-5, atol=1e-5)
    # and the overlapped patches are not that tile's alone (the neighbours take part)
    assert np.abs(emb[:, 9 + 1, 9 + 1] - alone[1, 1]).max() > 1e-4


def _steps(a: np.ndarray) -> np.ndarray:
    """``[W]``: size of the step from patch column c - 1 to c (mean over rows of the band-vector norm); 0 at c = 0."""
    return np.concatenate([[0.0], np.linalg.norm(np.diff(a, axis=2), axis=0).mean(axis=0)])


def seam(runner: ModelRunner, tmp_path: Path, overlap_m: int) -> dict[str, float]:
    """Steps across run A's tile borders, and at the same ground in run B, whose grid is shifted (80 m blended,
    120 m hard cut) so that those columns lie inside its tiles; and A's largest step anywhere."""
    tile, stride = 240, 240 - overlap_m
    width = tile + 4 * stride  # whole strides: no tile snapped back
    shift = 80 if overlap_m else 120
    left, bottom, _, top = l8_bbox(150, 150, width, 240)
    common = {"output": "patch", "head": "landcover", "tile_size_m": tile, "overlap_m": overlap_m}
    a = run(runner, l8_job(tmp_path / f"a{overlap_m}.tif", (left, bottom, left + width, top), **common))
    b = run(runner, l8_job(tmp_path / f"b{overlap_m}.tif", (left - shift, bottom, left - shift + width, top),
                           **common))
    with rasterio.open(a) as sa, rasterio.open(b) as sb:
        sa_steps, sb_steps = _steps(sa.read()), _steps(sb.read())
    k = shift // 20  # B's patch column of A's column 0
    edges = {x0 // 20 for x0 in range(stride, width - tile + 1, stride)} | \
        {(x0 + tile) // 20 for x0 in range(0, width - tile, stride)}
    borders = sorted(c for c in edges if 0 < c < len(sa_steps) and c + k < len(sb_steps))
    return {"border": float(sa_steps[borders].mean()), "shifted": float(sb_steps[[c + k for c in borders]].mean()),
            "max": float(sa_steps.max())}


def test_no_seam_across_tile_borders(runner: ModelRunner, tmp_path: Path) -> None:
    """Where a tile's context ends, its patch embeddings disagree with its neighbour's for the same ground (the
    demo encoder's by ~50x the step between neighbouring patches). Abutting tiles put all of that disagreement
    in one step: a seam. Blended, the step at a tile border is close to the step at that ground in a run whose
    tiles do not end there, and no step anywhere approaches the hard cut's."""
    blended = seam(runner, tmp_path, overlap_m=60)
    hard = seam(runner, tmp_path, overlap_m=0)
    print(f"seam: blended border step {blended}, hard cut {hard}")
    assert hard["border"] > 10 * hard["shifted"]  # the metric sees the seam where there is one
    assert blended["border"] < 0.15 * hard["border"]
    assert blended["max"] < 0.6 * hard["max"]  # the disagreement spread over the overlap, not one step
    # With half a tile of overlap, a border step is no larger than the same ground's step inside a tile: no seam.
    half = seam(runner, tmp_path, overlap_m=120)
    assert half["border"] <= half["shifted"], half


def test_landcover_mask_cog_and_skipped_nodata_tiles(runner: ModelRunner, tmp_path: Path) -> None:
    """The crop reprojected to web mercator with a nodata block: the UTM output has the crop's grid, the head's
    palette and class names, nodata (255) where no input was valid, and tiles wholly in the block are skipped."""
    with rasterio.open(LANDSAT) as src:
        window = Window(200, 150, 40, 40)
        data, tf = src.read(window=window), src.window_transform(window)
    data[:, 20:, :20] = 0  # a 600 m x 600 m hole, declared nodata
    path = write(tmp_path / "LC08_224078_20200518_hole.tif", data, CRS.from_epsg(32621), tf, nodata=0)
    sources = parse_sources({"l8": str(path)}, {"l8": "from-filenames"}, {"l8": "B2,B3,B4"})
    job = SceneJob(sources, tmp_path / "landcover.tif", head="landcover", tile_size_m=240, overlap_m=60)
    plan = plan_scene(job, checkpoint=CHECKPOINT, heads_dir=HEADS)
    result = run_scene(plan, InProcessExecutor(runner), batch_size=8)
    assert result.tiles_skipped >= 1 and result.tiles_run + result.tiles_skipped == result.tiles_total
    assert cog_validate(result.out, quiet=True)[0]
    with rasterio.open(result.out) as src:
        assert src.crs == CRS.from_epsg(32621)
        assert src.transform == Affine(10, 0, tf.c, 0, -10, tf.f)  # the crop's corner, at the head's 10 m grid
        assert src.nodata == 255 and src.dtypes[0] == "uint8"
        assert src.tags()["classes"] == "water,crop,tree,developed"
        assert src.colormap(1)[0] == (0x1F, 0x78, 0xB4, 255)
        mask = src.read(1)
    assert (mask[-60:, :60] == 255).all()  # the hole
    assert (mask[:60] < 4).all()  # everything else has a class
    assert not Path(str(result.out) + ".partial").exists()


def test_tile_output_geoparquet_matches_the_grid(runner: ModelRunner, tmp_path: Path) -> None:
    job = l8_job(tmp_path / "tiles.parquet", l8_bbox(100, 100, 600, 480), output="tile", tile_size_m=240,
                 overlap_m=0)
    plan = plan_scene(job, checkpoint=CHECKPOINT, heads_dir=HEADS)
    out = run_scene(plan, InProcessExecutor(runner)).out
    table = pq.read_table(out)
    assert table.num_rows == plan.grid.n_tiles == 6  # 600 m -> 3 columns (the last snapped back), 2 rows
    tiles = {t.id: t for t in plan.grid.tiles()}
    for tid, g in zip(table.column("tile_id").to_pylist(), shapely.from_wkb(table.column("geometry").to_pylist()),
                      strict=True):
        assert g.equals(shapely.box(*tiles[tid].bounds))
    assert str(table.column("start_date")[0]) == "2020-05-18"
    emb = np.asarray(table.column("embedding").to_pylist())
    assert emb.shape == (6, 64) and np.isfinite(emb).all()
    assert b"32621" in table.schema.metadata[b"geo"]


class StopAfter:
    """An in-process executor stopped after ``n`` batches (a killed run); records every tile it was given."""

    def __init__(self, runner: ModelRunner, n: int | None) -> None:
        self.inner, self.n, self.seen = InProcessExecutor(runner), n, []

    def submit(self, batch: Sequence[TileRequest]) -> dict[str, dict[str, np.ndarray]]:
        if self.n is not None and self.n <= 0:
            raise KeyboardInterrupt
        self.seen += [r.tile_id for r in batch]
        if self.n is not None:
            self.n -= 1
        return self.inner.submit(batch)

    def close(self) -> None:
        pass


def test_resume_does_not_redo_finished_tiles(runner: ModelRunner, tmp_path: Path) -> None:
    bbox = l8_bbox(300, 300, 600, 600)
    whole = run(runner, l8_job(tmp_path / "whole.tif", bbox, head="landcover", tile_size_m=240, overlap_m=60))
    job = l8_job(tmp_path / "resumed.tif", bbox, head="landcover", tile_size_m=240, overlap_m=60)
    plan = plan_scene(job, checkpoint=CHECKPOINT, heads_dir=HEADS)
    first = StopAfter(runner, 2)  # 3 tiles per batch = one tile row per batch: stopped after two rows
    with pytest.raises(KeyboardInterrupt):
        run_scene(plan, first, batch_size=3)
    assert not job.out.exists() and Path(str(job.out) + ".partial").is_dir()
    second = StopAfter(runner, None)
    result = run_scene(plan, second, batch_size=3, resume=True)
    assert sorted(second.seen) == ["r0002_c0000", "r0002_c0001", "r0002_c0002"]
    assert result.tiles_resumed == 6 and result.tiles_run == 3
    with rasterio.open(whole) as a, rasterio.open(result.out) as b:
        np.testing.assert_array_equal(a.read(), b.read())


def test_bad_inputs_are_refused_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with rasterio.open(LANDSAT) as src:
        window = Window(0, 0, 20, 20)
        data, tf = src.read(window=window), src.window_transform(window)
    far = write(tmp_path / "far_20200518.tif", data, CRS.from_epsg(32621),
                Affine(tf.a, 0, tf.c + 10_000, 0, tf.e, tf.f))
    near = write(tmp_path / "near_20200518.tif", data, CRS.from_epsg(32621), tf)
    coarse = write(tmp_path / "coarse.tif", np.zeros((4, 10, 10), np.uint8), CRS.from_epsg(32621),
                   Affine(30, 0, tf.c, 0, -30, tf.f))
    args = ["--checkpoint", str(CHECKPOINT), "--out", str(tmp_path / "x.tif")]
    l8 = ["--sensor", f"l8={near}", "--bands", "l8=B2,B3,B4"]
    cases = {
        r"sensor.s2: .*far_20200518.tif: does not overlap the other inputs":
            [*l8, "--sensor", f"s2={far}", "--bands", "s2=B2,B3,B4"],
        r"dates.l8: 2 dates given for 1 acquisitions": [*l8, "--dates", "l8=2020-01-01,2020-02-01"],
        r"sensor.aerial: .*coarse.tif has 30 m pixels .*more than 10x finer": ["--sensor", f"aerial={coarse}"],
        r"area: .* at most 0.01 km²": ["--sensor", f"l8={LANDSAT}", "--bands", "l8=B2,B3,B4", "--max-area-km2",
                                       "0.01"],
        r"head: no head 'nope'": [*l8, "--head", "nope"],
        r"out: --output tile writes .parquet": [*l8, "--output", "tile"],
    }
    for message, extra in cases.items():
        assert predict_main([*extra, *args]) == 2, message
        err = capsys.readouterr().err
        assert re.search(message, err), (message, err)
    assert not list(tmp_path.glob("x.tif*"))  # nothing written
    with pytest.raises(SceneLimitError) as info:
        plan_scene(l8_job(tmp_path / "y.tif", l8_bbox(0, 0, 3000, 3000)), checkpoint=CHECKPOINT,
                   heads_dir=HEADS, limits=SceneLimits(max_tiles=4))
    assert info.value.limit == "max_tiles"
    no_crs = write(tmp_path / "nocrs_20200518.tif", data, None, Affine.identity())
    with pytest.raises(SceneError, match="has no CRS"):
        parse_sources({"l8": str(no_crs)}, bands={"l8": "B2,B3,B4"})


def test_multi_sensor_series_and_aerial_each_at_its_own_gsd(runner: ModelRunner, tmp_path: Path) -> None:
    """The shipped TreeSatAI aerial tile (0.2 m, EPSG:25832), mirrored to 121.6 m, with an s2 series of two dates
    (dates from the file names) in web mercator at ~10 m on the ground: one grid in the aerial's CRS, each sensor
    read at its own GSD, patch embeddings that use both sensors."""
    with rasterio.open(REPO / "examples" / "data" / "treesatai-ts" / "Abies_alba_1_1005_WEFL_NLF.tif") as src:
        img, tf, crs = src.read(), src.transform, src.crs
    big = np.concatenate([np.concatenate([img, img[:, :, ::-1]], 2)] * 2, 1)[:, : 2 * img.shape[1]]
    aerial = write(tmp_path / "aerial.tif", np.ascontiguousarray(big), crs, tf)
    merc = CRS.from_epsg(3857)
    left, bottom, right, top = transform_bounds(crs, merc, tf.c - 50, tf.f - 170, tf.c + 170, tf.f + 50)
    res = 16.0  # web-mercator units at ~52°N: ~10 m on the ground
    w, h = int((right - left) / res), int((top - bottom) / res)
    rng = np.random.default_rng(0)
    for day in ("20200412", "20200703"):
        write(tmp_path / f"S2B_MSIL2A_{day}T103619.tif", rng.integers(500, 4000, (10, h, w)).astype(np.uint16), merc,
              Affine(res, 0, left, 0, -res, top))
    kw = {"output": "patch", "tile_size_m": 60, "overlap_m": 20, "patch_size": 20}
    both = parse_sources({"aerial": str(aerial), "s2": str(tmp_path / "S2B_*.tif")}, {"s2": "from-filenames"})
    assert both["s2"].dates == (np.datetime64("2020-04-12").item(), np.datetime64("2020-07-03").item())
    plan = plan_scene(SceneJob(both, tmp_path / "both.tif", **kw), checkpoint=CHECKPOINT)  # type: ignore[arg-type]
    assert plan.grid.crs == crs and plan.grid.n_tiles == 9  # 120 m floored to patches: 3 x 3 tiles of 60 m
    result = run_scene(plan, InProcessExecutor(runner), batch_size=9)
    s2_only = run(runner, SceneJob({"s2": both["s2"]}, tmp_path / "s2.tif", crs=crs.to_string(),
                                   bbox=plan.grid.bounds, **kw))  # type: ignore[arg-type]
    with rasterio.open(result.out) as a, rasterio.open(s2_only) as b:
        ea, eb = a.read(), b.read()
        assert a.crs == crs and a.transform.a == 20 and ea.shape == (64, 6, 6)
    assert np.isfinite(ea).all()
    assert np.abs(ea - eb).max() > 1e-3  # the aerial image took part


def test_int8_embeddings_carry_their_scale(runner: ModelRunner, tmp_path: Path) -> None:
    bbox = l8_bbox(250, 250, 240, 240)
    f32 = run(runner, l8_job(tmp_path / "f.tif", bbox, output="patch", head="landcover", tile_size_m=240))
    q8 = run(runner, l8_job(tmp_path / "q.tif", bbox, output="patch", head="landcover", tile_size_m=240,
                            embedding_dtype="int8"))
    with rasterio.open(f32) as a, rasterio.open(q8) as b:
        scale, offset = float(b.tags()["embedding_scale"]), float(b.tags()["embedding_offset"])
        assert b.dtypes[0] == "int8" and b.nodata == -128
        x, q = a.read(), b.read().astype(np.float32) * scale + offset
    assert np.abs(x).max() < 8  # inside the quantisation range: only rounding error
    np.testing.assert_allclose(q, x, atol=scale / 2 + 1e-6)


@pytest.mark.skipif(rasterio.dtypes.check_dtype("float16"), reason="this GDAL writes float16 GeoTIFFs")
def test_float16_embeddings_are_refused_up_front_where_gdal_cannot_write_them(tmp_path: Path) -> None:
    with pytest.raises(SceneError, match=r"embedding_dtype: float16 GeoTIFFs need GDAL 3\.11"):
        plan_scene(l8_job(tmp_path / "h.tif", l8_bbox(250, 250, 240, 240), output="patch", embedding_dtype="float16"),
                   checkpoint=CHECKPOINT, heads_dir=HEADS)


def test_the_cli_runs_the_issue_example_on_part_of_the_crop(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    bbox = ",".join(f"{v:.0f}" for v in l8_bbox(220, 180, 480, 480))
    base = ["--sensor", f"l8={LANDSAT}", "--bands", "l8=B2,B3,B4", "--dates", "l8=2020-05-18", "--head", "landcover",
            "--checkpoint", str(CHECKPOINT), "--bbox", bbox, "--tile-size", "240", "--no-progress"]
    assert predict_main([*base, "--out", str(tmp_path / "landcover.tif")]) == 0
    assert predict_main([*base, "--output", "tile", "--out", str(tmp_path / "tiles.parquet")]) == 0
    err = capsys.readouterr().err
    assert "9 tiles (3 x 3) of 240 m, overlap 60 m" in err and "wrote" in err
    assert cog_validate(tmp_path / "landcover.tif", quiet=True)[0]
    assert pq.read_table(tmp_path / "tiles.parquet").num_rows == 9


def test_tile_rows_carry_the_dates_their_series_kept(runner: ModelRunner, tmp_path: Path) -> None:
    """Two dates; the second has no data over the top-left tile: that tile's time range is the first date only."""
    with rasterio.open(LANDSAT) as src:
        window = Window(100, 100, 16, 16)  # 480 m
        data, tf = src.read(window=window), src.window_transform(window)
    late = data.copy()
    late[:, :8, :8] = 0  # 240 m x 240 m, declared nodata
    a = write(tmp_path / "LC08_20200518.tif", data, CRS.from_epsg(32621), tf, nodata=0)
    b = write(tmp_path / "LC08_20200603.tif", late, CRS.from_epsg(32621), tf, nodata=0)
    sources = parse_sources({"l8": [str(a), str(b)]}, bands={"l8": "B2,B3,B4"})
    job = SceneJob(sources, tmp_path / "t.parquet", output="tile", tile_size_m=240, overlap_m=0, head="landcover")
    table = pq.read_table(run(runner, job))
    ends = dict(zip(table.column("tile_id").to_pylist(), map(str, table.column("end_date").to_pylist()),
                    strict=True))
    assert ends == {"r0000_c0000": "2020-05-18", "r0000_c0001": "2020-06-03", "r0001_c0000": "2020-06-03",
                    "r0001_c0001": "2020-06-03"}


def test_a_vector_area_of_interest_in_another_crs_sets_the_grid(tmp_path: Path) -> None:
    """The AOI: a GeoPackage polygon in lon/lat; the grid covers its extent in the output CRS (UTM), within the
    crop. An AOI beside a bbox, or a file that is not a vector file, is refused before any work, naming ``aoi``."""
    import pyogrio
    from rasterio.warp import transform_bounds

    left, bottom, right, top = l8_bbox(200, 150, 600, 480)
    lon_lat = transform_bounds(CRS.from_epsg(32621), CRS.from_epsg(4326), left, bottom, right, top)
    box = shapely.box(*lon_lat)
    aoi = tmp_path / "aoi.gpkg"
    # pyogrio's own writer: no geopandas needed
    pyogrio.raw.write(str(aoi), geometry=np.array([shapely.to_wkb(box)], dtype=object), field_data=[], fields=[],
                      geometry_type="Polygon", crs="EPSG:4326", driver="GPKG")
    sources = parse_sources({"l8": str(LANDSAT)}, {"l8": "2020-05-18"}, {"l8": "B2,B3,B4"})
    plan = plan_scene(SceneJob(sources, tmp_path / "e.tif", output="patch", head="landcover", tile_size_m=240,
                               overlap_m=60, aoi=aoi), checkpoint=CHECKPOINT, heads_dir=HEADS)
    g = plan.grid
    assert g.crs == CRS.from_epsg(32621)
    # The polygon's lon/lat box re-projected covers at least the UTM box it came from, and not much more.
    assert g.left <= left + 20 and g.top >= top - 20
    assert abs(g.width_m - (right - left)) <= 60 and abs(g.height_m - (top - bottom)) <= 60
    with pytest.raises(SceneError, match="aoi"):
        plan_scene(SceneJob(sources, tmp_path / "e.tif", output="patch", aoi=aoi, bbox=(left, bottom, right, top)),
                   checkpoint=CHECKPOINT, heads_dir=HEADS)
    (tmp_path / "junk.gpkg").write_bytes(b"not a geopackage")
    with pytest.raises(SceneError, match=r"aoi: .*not a readable vector file"):
        plan_scene(SceneJob(sources, tmp_path / "e.tif", output="patch", aoi=tmp_path / "junk.gpkg"),
                   checkpoint=CHECKPOINT, heads_dir=HEADS)
