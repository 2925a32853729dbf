"""Masks: a crop of the real Landsat 8 scene (B2, B3, B4, resampled to the l8 sensor's 10 m; the other eight
l8 bands filled) posted as a GeoTIFF to a segmentation head in the training file format; the class map comes
back as a GeoTIFF with the input's CRS and transform, the head's classes, and nodata outside the class range.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from gateway_fixtures import CLS_HEAD, LANDSAT, SEG_HEAD, Service
from rasterio.windows import Window

from model import AnySat
from model.checkpoint import file_sha256
from model.heads import load_head, save_head
from model.normalize import normalize
from model.sensors import NormStats
from service.client import AnySatClient, AnySatError

SIDE = 30  # px of 10 m: a 300 m tile, 10 x 10 patches of 30 m


@pytest.fixture(scope="module")
def landsat_l8(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, dict]:
    with rasterio.open(LANDSAT) as src:
        window = Window(200, 180, SIDE // 3, SIDE // 3)
        rgb = src.read(window=window).astype(np.float32).repeat(3, axis=1).repeat(3, axis=2)  # 30 m -> 10 m
        t = src.window_transform(window)
        crs = src.crs
    bands = np.zeros((11, SIDE, SIDE), np.float32)
    bands[2:5] = rgb  # l8 band order: B8, B1, B2, B3, B4, ...
    path = tmp_path_factory.mktemp("l8") / "l8.tif"
    with rasterio.open(path, "w", driver="GTiff", count=11, height=SIDE, width=SIDE, dtype="float32", crs=crs,
                       transform=Affine(10.0, 0.0, t.c, 0.0, -10.0, t.f)) as dst:
        dst.write(bands)
    mean, std = [0.0] * 11, [1.0] * 11
    for i in (2, 3, 4):
        mean[i], std[i] = float(bands[i].mean()), float(bands[i].std())
    return path, bands, {"l8": {"mean": mean, "std": std}}


def test_mask_geotiff_round_trip_keeps_crs_and_transform(gateway_service: Service, tiny: AnySat,
                                                         landsat_l8: tuple) -> None:
    path, bands, stats = landsat_l8
    with AnySatClient(gateway_service.url) as client:
        tiff = client.mask_geotiffs({"l8": path}, head=SEG_HEAD, dates={"l8": ["2020-05-18"]},
                                    normalize="custom", stats=stats)
    with rasterio.open(io.BytesIO(tiff)) as mask, rasterio.open(path) as src:
        assert mask.crs == src.crs
        assert mask.transform.almost_equals(src.transform)
        assert (mask.width, mask.height, mask.count) == (SIDE, SIDE, 1)
        assert mask.dtypes[0] == "uint8" and mask.nodata == 255
        assert mask.tags()["classes"] == "water,crop,tree,developed"
        classes = mask.read(1)
    # The same class map computed directly: model + head on identically normalised data.
    head = load_head(gateway_service.settings.heads_dir / f"{SEG_HEAD}.safetensors")
    x = normalize("l8", bands[None], NormStats(tuple(stats["l8"]["mean"]), tuple(stats["l8"]["std"]), "test"))
    data = {"l8": torch.from_numpy(x)[None], "l8_dates": torch.tensor([[139]])}
    with torch.no_grad():
        logits = head(tiny(data, patch_size=30, output="dense", output_modality="l8"))[0]
    assert (classes == logits.argmax(0).numpy()).mean() > 0.99  # argmax ties at float noise aside
    assert classes.max() < 4


def test_mask_json_probabilities_and_classification(gateway_service: Service, landsat_l8: tuple) -> None:
    _path, bands, _stats = landsat_l8
    with AnySatClient(gateway_service.url) as client:
        (seg,) = client.mask({"l8": bands[None] / 1000}, head=SEG_HEAD, dates={"l8": [139]}, normalize="none",
                             probabilities=True)
        assert seg.arrays["class_map"].shape == (SIDE, SIDE)
        np.testing.assert_allclose(seg.arrays["probabilities"].sum(0), 1.0, atol=1e-5)
        rng = np.random.default_rng(0)
        tile = {"aerial": rng.integers(0, 255, (4, 300, 300), dtype=np.uint8),
                "s2": rng.normal(3000, 500, (3, 10, 6, 6)).astype(np.float32)}
        (cls,) = client.mask(tile, head=CLS_HEAD, dates={"s2": [10, 50, 90]})
    assert cls.extra["class"] in ("Abies_alba", "Picea_abies", "Pinus_sylvestris")


def test_head_fitted_on_another_encoder_is_refused(gateway_service: Service, landsat_l8: tuple) -> None:
    """A head records its encoder's sha256; on another encoder's features it would answer nonsense."""
    _path, bands, _stats = landsat_l8
    heads_dir = gateway_service.settings.heads_dir
    served = file_sha256(gateway_service.settings.checkpoint)
    head = load_head(heads_dir / f"{SEG_HEAD}.safetensors")
    for name, sha in (("foreign", "0" * 64), ("own", served)):
        head.config = dataclasses.replace(head.config, encoder_sha256=sha)
        save_head(head, heads_dir / f"{name}.safetensors")
    try:
        with AnySatClient(gateway_service.url) as client:
            with pytest.raises(AnySatError) as exc:
                client.mask({"l8": bands[None] / 1000}, head="foreign", dates={"l8": [139]}, normalize="none")
            assert exc.value.status == 409
            assert exc.value.error["field"] == "head" and "000000000000" in exc.value.error["message"]
            (own,) = client.mask({"l8": bands[None] / 1000}, head="own", dates={"l8": [139]}, normalize="none")
            assert own.arrays["class_map"].shape == (SIDE, SIDE)
            listed = {h["name"]: h for h in client.models()["heads"]}
            assert "fitted on encoder" in listed["foreign"]["error"] and "error" not in listed["own"]
    finally:
        for name in ("foreign", "own"):
            (heads_dir / f"{name}.safetensors").unlink()
