"""The shipped TreeSatAI tile as a user has it — the 304 px (60.8 m) aerial GeoTIFF and the 6 px (60 m)
Sentinel series from its HDF5 file — through a real gateway: refused with what the tile is and what would fit,
or, with ``crop=center``, cropped to 60 m and embedded as the model embeds the official demo's crop."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
import torch
from gateway_fixtures import TREESAT, Service

from model import AnySat
from model.normalize import normalize
from training.data.treesatai import read_treesatai_tile

AERIAL_TIF = TREESAT.with_suffix(".tif").read_bytes()


def npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


@pytest.fixture(scope="module")
def series() -> dict:
    return read_treesatai_tile(TREESAT.with_suffix(".tif"), TREESAT.with_suffix(".h5"), ("aerial", "s2", "s1-asc"))


def form(series: dict, **fields: str) -> dict:
    files = {"aerial": ("aerial.tif", AERIAL_TIF), "s2": ("s2.npy", npy(series["s2"].data)),
             "s1-asc": ("s1.npy", npy(series["s1-asc"].data))}
    data = {"patch_size": "20", "s2_dates": ",".join(map(str, series["s2"].dates)),
            "s1-asc_dates": ",".join(map(str, series["s1-asc"].dates)), **fields}
    return {"files": files, "data": data}


def test_shipped_tile_is_refused_with_what_would_fit(gateway_service: Service, series: dict) -> None:
    r = httpx.post(f"{gateway_service.url}/v1/embeddings", **form(series), timeout=60)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"] == "aerial"
    assert "aerial is 304 px = 60.8 m at 0.2 m" in error["message"]
    assert "crop to 60 m (300 px of aerial, 6 px of s2, 6 px of s1-asc), or send crop=center" in error["message"]


def test_aerial_alone_names_the_patch_grid_and_the_crop(gateway_service: Service) -> None:
    r = httpx.post(f"{gateway_service.url}/v1/embeddings", files={"aerial": ("a.tif", AERIAL_TIF)},
                   data={"patch_size": "40"}, timeout=60)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"] == "patch_size"
    assert error["message"] == ("patch_size: aerial is 304 px = 60.8 m at 0.2 m; with patch_size 40 m a tile must be "
                                "a multiple of 40 m on a side: crop to 40 m (200 px of aerial), or send crop=center")


@pytest.mark.parametrize("patch_size", [20, 30])
def test_crop_center_embeds_the_shipped_tile(gateway_service: Service, tiny: AnySat, series: dict,
                                             patch_size: int) -> None:
    r = httpx.post(f"{gateway_service.url}/v1/embeddings", timeout=120,
                   **form(series, crop="center", output="patch", patch_size=str(patch_size)))
    assert r.status_code == 200, r.text
    body = r.json()
    served = np.frombuffer(base64.b64decode(body["tiles"][0]["embedding"]["data"]), np.float32)
    # read_treesatai_tile crops the aerial to its centre 300 px ([2:302], the official demo's crop), as
    # crop=center does for the 304 px file; the 6 px series already cover 60 m.
    data: dict[str, torch.Tensor] = {}
    for name, item in series.items():
        data[name] = torch.from_numpy(normalize(name, item.data))[None]
        if item.dates is not None:
            data[f"{name}_dates"] = torch.from_numpy(item.dates)[None]
    with torch.no_grad():
        want = tiny(data, patch_size=patch_size, output="patch")[0].numpy()
    assert np.abs(served.reshape(want.shape) - want).max() < 1e-4
    georef = body["tiles"][0]["georef"]
    n = 60 // patch_size
    assert (georef["width"], georef["height"]) == (n, n)
    a, _, c, _, e, f = georef["transform"]
    assert abs(a - patch_size) < 1e-6 and abs(e + patch_size) < 1e-6
    assert abs(c - (565642.6 + 2 * 0.2)) < 1e-3 and abs(f - (5770980.4 - 2 * 0.2)) < 1e-3  # moved by the 2 px crop
    assert body["normalization"] == {"aerial": "sensor table", "s2": "sensor table", "s1-asc": "sensor table"}


def test_crop_center_with_nothing_to_crop_to(gateway_service: Service) -> None:
    small = np.full((4, 40, 40), 90, np.uint8)  # 8 m of aerial: less than one 20 m patch
    r = httpx.post(f"{gateway_service.url}/v1/embeddings", files={"aerial": ("a.npy", npy(small))},
                   data={"patch_size": "20", "crop": "center"}, timeout=60)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "crop" and "smaller than one patch" in r.json()["error"]["message"]


def test_crop_is_checked_like_every_option(gateway_service: Service) -> None:
    r = httpx.post(f"{gateway_service.url}/v1/embeddings", files={"aerial": ("a.tif", AERIAL_TIF)},
                   data={"patch_size": "20", "crop": "middle"}, timeout=60)
    assert r.status_code == 422 and r.json()["error"]["field"] == "crop", r.text
