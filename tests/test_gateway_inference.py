"""The gateway over real HTTP, Redis and a worker running the tiny official-format checkpoint: the real
TreeSatAI tile sent as GeoTIFFs + dates, as JSON arrays, as .npz and through tritonclient gives the
model's own embeddings (within 1e-4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from gateway_fixtures import TREESAT, Service

from model import AnySat
from model.normalize import normalize
from service.client import AnySatClient
from training.data.treesatai import read_treesatai_tile

ATOL = 1e-4


@pytest.fixture(scope="module")
def tile() -> dict:
    return read_treesatai_tile(TREESAT.with_suffix(".tif"), TREESAT.with_suffix(".h5"), ("aerial", "s2", "s1-asc"))


def expected(model: AnySat, tile: dict, patch_size: int, output: str, modality: str | None = None) -> np.ndarray:
    data: dict[str, torch.Tensor] = {}
    for name, item in tile.items():
        data[name] = torch.from_numpy(normalize(name, item.data))[None]
        if item.dates is not None:
            data[f"{name}_dates"] = torch.from_numpy(item.dates)[None]
    with torch.no_grad():
        return model(data, patch_size=patch_size, output=output, output_modality=modality)[0].numpy()


def write_tif(path: Path, bands: np.ndarray, transform: Affine, crs: str) -> Path:
    with rasterio.open(path, "w", driver="GTiff", count=bands.shape[0], height=bands.shape[1], width=bands.shape[2],
                       dtype=bands.dtype.name, transform=transform, crs=crs) as dst:
        dst.write(bands)
    return path


@pytest.fixture(scope="module")
def geotiffs(tile: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    d = tmp_path_factory.mktemp("treesat")
    aerial = tile["aerial"]
    t = Affine(*aerial.georef.transform)
    crs = aerial.georef.crs_wkt
    ten_m = Affine(10.0, 0.0, t.c, 0.0, -10.0, t.f)  # the 6 x 6 series grid over the same 60 m
    s2 = tile["s2"].data
    s1 = tile["s1-asc"].data
    return {
        "aerial": write_tif(d / "aerial.tif", aerial.data, t, crs),
        # s2: one GeoTIFF, bands in dates x bands order; s1-asc: one GeoTIFF per date.
        "s2": write_tif(d / "s2.tif", s2.reshape(-1, 6, 6), ten_m, crs),
        "s1-asc": [write_tif(d / f"s1_{i:03d}.tif", s1[i], ten_m, crs) for i in range(len(s1))],
    }


def test_geotiffs_and_dates_give_the_model_embeddings(gateway_service: Service, tiny: AnySat, tile: dict,
                                                      geotiffs: dict) -> None:
    dates = {"s2": tile["s2"].acquired, "s1-asc": [int(d) for d in tile["s1-asc"].dates]}  # ISO and day of year
    with AnySatClient(gateway_service.url) as client:
        result = client.embed_geotiffs(geotiffs, dates=dates, patch_size=20, output="patch")
    want = expected(tiny, tile, 20, "patch")
    np.testing.assert_allclose(result.arrays["embedding"], want, atol=ATOL)
    # The patch grid is georeferenced: 3 x 3 patches of 20 m from the aerial tile's corner.
    g = result.georef
    t = tile["aerial"].georef.transform
    assert (g["width"], g["height"]) == (3, 3)
    assert g["transform"][0] == pytest.approx(20.0, rel=1e-6) and g["transform"][2] == pytest.approx(t[2])
    assert rasterio.crs.CRS.from_user_input(g["crs"]) == rasterio.crs.CRS.from_user_input(tile["aerial"].georef.crs_wkt)


@pytest.mark.parametrize(("output", "modality"), [("tile", None), ("dense", "s2"), ("all", None)])
def test_json_arrays_give_the_model_embeddings(gateway_service: Service, tiny: AnySat, tile: dict, output: str,
                                               modality: str | None) -> None:
    arrays = {name: item.data for name, item in tile.items()}
    dates = {name: item.dates.tolist() for name, item in tile.items() if item.dates is not None}
    with AnySatClient(gateway_service.url) as client:
        (result,) = client.embed(arrays, dates=dates, patch_size=20, output=output, output_modality=modality)
    np.testing.assert_allclose(result.arrays["embedding"], expected(tiny, tile, 20, output, modality), atol=ATOL)


def test_batch_of_tiles_and_npz(gateway_service: Service, tiny: AnySat, tile: dict) -> None:
    arrays = {name: item.data for name, item in tile.items()}
    dates = {name: item.dates.tolist() for name, item in tile.items() if item.dates is not None}
    short = {**arrays, "s2": arrays["s2"][:40]}  # another date count: padded and masked in the worker's batch
    short_dates = {**dates, "s2": dates["s2"][:40]}
    want = expected(tiny, tile, 30, "tile")
    with AnySatClient(gateway_service.url) as client:
        results = client.embed([arrays, short], dates=[dates, short_dates], patch_size=30)
        np.testing.assert_allclose(results[0].arrays["embedding"], want, atol=ATOL)
        assert results[1].arrays["embedding"].shape == want.shape
        npy = client.embed_npy(arrays, dates=dates, patch_size=30)
    np.testing.assert_allclose(npy, want, atol=ATOL)


def test_tritonclient_against_v2(gateway_service: Service, tiny: AnySat, tile: dict) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(gateway_service.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("g-never") is False or True  # unknown names answer 404, not a crash
    model = f"{gateway_service.settings.queue_prefix}-patch"
    assert client.is_model_ready(model)
    meta = client.get_model_metadata(model)
    assert {"s2", "s2_dates", "aerial"} <= {i["name"] for i in meta["inputs"]}
    inputs = []
    for name, item in tile.items():
        x = normalize(name, item.data)[None]
        inp = httpclient.InferInput(name, list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        inputs.append(inp)
        if item.dates is not None:
            d = item.dates[None].astype(np.int64)
            dinp = httpclient.InferInput(f"{name}_dates", list(d.shape), "INT64")
            dinp.set_data_from_numpy(d, binary_data=(name == "s2"))  # one JSON input, the rest binary
            inputs.append(dinp)
    out = client.infer(model, inputs, parameters={"patch_size": 20},
                       outputs=[httpclient.InferRequestedOutput("embedding", binary_data=True)])
    np.testing.assert_allclose(out.as_numpy("embedding")[0], expected(tiny, tile, 20, "patch"), atol=ATOL)
    json_out = client.infer(model, inputs, parameters={"patch_size": 20},
                            outputs=[httpclient.InferRequestedOutput("embedding", binary_data=False)])
    np.testing.assert_allclose(json_out.as_numpy("embedding"), out.as_numpy("embedding"), atol=1e-6)
    client.close()
