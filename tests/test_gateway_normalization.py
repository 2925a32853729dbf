"""normalize=auto uses the statistics training recorded — the head's (masks), then the served checkpoint's —
before the sensor table's, and every response says which were used. Through a real gateway serving the demo
encoder and its land-cover head (artifacts/demo), on a crop of the shipped Landsat 8 scene."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from gateway_fixtures import LANDSAT, Service, running
from rasterio.io import MemoryFile
from rasterio.windows import Window

from model import AnySat, create_model
from model.checkpoint import read_metadata
from model.heads import load_head, save_head
from model.normalize import normalize
from model.sensors import SENSORS, NormStats
from service.gateway.inputs.arrays import to_base64 as b64_array
from service.gateway.normalization import checkpoint_stats, parse_recorded
from service.gateway.settings import DEMO_CHECKPOINT, DEMO_HEADS, GatewaySettings
from service.runtime.runner import ModelRunner

SIDE = 30  # px of 10 m: 300 m, 15 x 15 patches of the head's 20 m


@pytest.fixture(scope="module")
def demo(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    heads = tmp_path_factory.mktemp("heads")
    shutil.copy(DEMO_HEADS / "landcover.safetensors", heads)
    bare = load_head(heads / "landcover.safetensors")  # the same head with no recorded statistics
    metadata = {k: v for k, v in bare.config.metadata.items() if k != "normalization"}
    bare.config = dataclasses.replace(bare.config, metadata=metadata)
    save_head(bare, heads / "landcover-bare.safetensors")
    prefix = f"d{uuid.uuid4().hex[:8]}"
    settings = GatewaySettings(redis_url=redis_url, queue_prefix=prefix, checkpoint=DEMO_CHECKPOINT, heads_dir=heads,
                               request_deadline_s=60, _env_file=None)  # type: ignore[call-arg]
    with running(settings, ModelRunner(create_model(checkpoint=DEMO_CHECKPOINT), heads_dir=heads)) as service:
        yield service


@pytest.fixture(scope="module")
def demo_model() -> AnySat:
    return create_model(checkpoint=DEMO_CHECKPOINT).eval()


@pytest.fixture(scope="module")
def l8() -> np.ndarray:
    """B2, B3, B4 of the shipped crop at 10 m (nearest, as the training cutter samples it), the other eight l8
    bands 0 — what training filled them with (``missing_bands="fill"``), which the head's statistics keep at 0."""
    with rasterio.open(LANDSAT) as src:
        rgb = src.read(window=Window(200, 180, SIDE // 3, SIDE // 3)).repeat(3, axis=1).repeat(3, axis=2)
    bands = np.zeros((11, SIDE, SIDE), np.uint16)
    bands[2:5] = rgb
    return bands


def l8_tif(bands: np.ndarray) -> bytes:
    with MemoryFile() as mf:
        with mf.open(driver="GTiff", count=11, height=SIDE, width=SIDE, dtype="uint16", crs="EPSG:32621",
                     transform=Affine(10.0, 0, 741345.0, 0, -10.0, -2797395.0)) as dst:
            dst.write(bands)
        return mf.read()


def stats_of(recorded: dict) -> NormStats:
    return NormStats(tuple(recorded["mean"]), tuple(recorded["std"]), "test")


def dense_logits(model: AnySat, head_name: str, bands: np.ndarray, stats: NormStats) -> np.ndarray:
    head = load_head(DEMO_HEADS / f"{head_name}.safetensors")
    data = {"l8": torch.from_numpy(normalize("l8", bands.astype(np.float32), stats))[None, None],
            "l8_dates": torch.tensor([[139]])}
    with torch.no_grad():
        return head(model(data, patch_size=20, output="dense", output_modality="l8"))[0].numpy()


def test_mask_uses_the_heads_recorded_statistics(demo: Service, demo_model: AnySat, l8: np.ndarray) -> None:
    """The README's mask call: an l8 GeoTIFF, one date, head=landcover, nothing about normalisation."""
    r = httpx.post(f"{demo.url}/v1/masks", files={"l8": ("scene.tif", l8_tif(l8))},
                   data={"l8_dates": "139", "head": "landcover", "format": "geotiff"}, timeout=60)
    assert r.status_code == 200, r.text
    assert json.loads(r.headers["x-anysat-meta"])["normalization"] == {"l8": "head:landcover"}
    with MemoryFile(r.content) as mf, mf.open() as m:
        classes = m.read(1)
    recorded = load_head(DEMO_HEADS / "landcover.safetensors").config.metadata["normalization"]["l8"]
    want = dense_logits(demo_model, "landcover", l8, stats_of(recorded)).argmax(0)
    assert (classes == want).mean() > 0.99  # argmax ties at float noise aside


def test_mask_json_says_which_statistics(demo: Service, demo_model: AnySat, l8: np.ndarray) -> None:
    body = {"head": "landcover", "probabilities": True, "tiles": [{"l8": {**b64_array(l8[None]), "dates": [139]}}]}
    r = httpx.post(f"{demo.url}/v1/masks", json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["normalization"] == {"l8": "head:landcover"}
    # A head that recorded nothing falls back to the encoder checkpoint's statistics (its pretraining data).
    r = httpx.post(f"{demo.url}/v1/masks", json={**body, "head": "landcover-bare"}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["normalization"] == {"l8": "checkpoint"}


def test_embeddings_use_the_checkpoints_recorded_statistics(demo: Service, demo_model: AnySat,
                                                            l8: np.ndarray) -> None:
    r = httpx.post(f"{demo.url}/v1/embeddings", files={"l8": ("scene.tif", l8_tif(l8))},
                   data={"l8_dates": "139", "patch_size": "20", "output": "patch", "format": "npy"}, timeout=60)
    assert r.status_code == 200, r.text
    assert json.loads(r.headers["x-anysat-meta"])["normalization"] == {"l8": "checkpoint"}
    served = np.load(io.BytesIO(r.content))[0]
    _, meta = read_metadata(DEMO_CHECKPOINT)
    stats = stats_of(meta["normalization"]["landsat8-crop"]["l8"])
    data = {"l8": torch.from_numpy(normalize("l8", l8.astype(np.float32), stats))[None, None],
            "l8_dates": torch.tensor([[139]])}
    with torch.no_grad():
        want = demo_model(data, patch_size=20, output="patch")[0].numpy()
    assert np.abs(served - want).max() < 1e-5


def test_v2_auto_uses_the_checkpoints_recorded_statistics(demo: Service, l8: np.ndarray) -> None:
    """v2 with normalize=auto normalises l8 as /v1 does (the checkpoint's statistics), not a 422."""
    v1 = httpx.post(f"{demo.url}/v1/embeddings", files={"l8": ("scene.tif", l8_tif(l8))},
                    data={"l8_dates": "139", "patch_size": "20", "format": "npy"}, timeout=60)
    assert v1.status_code == 200, v1.text
    x = l8.astype(np.float32)[None, None]
    body = {"parameters": {"patch_size": 20, "normalize": "auto"}, "inputs": [
        {"name": "l8", "datatype": "FP32", "shape": list(x.shape), "data": x.reshape(-1).tolist()},
        {"name": "l8_dates", "datatype": "INT64", "shape": [1, 1], "data": [139]}]}
    r = httpx.post(f"{demo.url}/v2/models/{demo.settings.queue_prefix}-tile/infer", json=body, timeout=60)
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    served = np.asarray(out["data"], np.float32).reshape(out["shape"])
    assert np.abs(served - np.load(io.BytesIO(v1.content))).max() < 1e-5


def test_sources_on_a_checkpoint_that_recorded_nothing(gateway_service: Service) -> None:
    """The official-format checkpoint has no metadata: the sensor table, or what the request says."""
    s2 = {**b64_array(np.full((2, 10, 6, 6), 3000, np.uint16)), "dates": [10, 20]}
    cases = [({}, "sensor table"), ({"normalize": "none"}, "none"),
             ({"normalize": "custom", "stats": {"s2": {"mean": [3000] * 10, "std": [100] * 10}}}, "request")]
    for options, source in cases:
        r = httpx.post(f"{gateway_service.url}/v1/embeddings", json={"patch_size": 20, "tiles": [{"s2": s2}],
                                                                       **options}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["normalization"] == {"s2": source}
    r = httpx.post(f"{gateway_service.url}/v1/embeddings", timeout=60, json={
        "patch_size": 20, "tiles": [{"l8": {**b64_array(np.ones((1, 11, 6, 6), np.float32)), "dates": [9]}}]})
    assert r.status_code == 422 and r.json()["error"]["field"] == "normalize", r.text
    assert "none in checkpoint or the sensor table" in r.json()["error"]["message"]


def test_recorded_statistics_are_read_as_training_writes_them(tmp_path: Path) -> None:
    s2 = {"mean": [1.0] * 10, "std": [2.0] * 10, "source": "stats.json"}
    flat = parse_recorded({"s2": s2, "l8": {"mean": [0.0], "std": [1.0]}}, "head")  # l8: wrong band count
    assert list(flat) == ["s2"] and flat["s2"].mean == (1.0,) * 10 and flat["s2"].source == "stats.json"
    nested = parse_recorded({"tsai": {"s2": s2}, "other": {"s2": {**s2, "mean": [5.0] * 10}, "bogus": {}}}, "ckpt")
    assert nested["s2"].mean == (1.0,) * 10  # the first dataset recording a sensor wins
    assert parse_recorded({"s2": {**s2, "std": [0.0] * 10}}, "x") == {}  # a zero std cannot normalise
    assert parse_recorded(None, "x") == {} and parse_recorded([1, 2], "x") == {}
    demo = checkpoint_stats(DEMO_CHECKPOINT)
    assert demo.label == "checkpoint" and set(demo.stats) == {"aerial", "s1-asc", "s2", "l8"}
    assert demo.stats["s2"].mean == SENSORS["s2"].stats.mean  # the demo was pretrained with the table's
    (tmp_path / "broken.safetensors").write_bytes(b"not a checkpoint")
    assert checkpoint_stats(tmp_path / "broken.safetensors").stats == {}
