"""Input nodata through a real gateway: a GeoTIFF's nodata (a value, or NaN declared as nodata) becomes the
model's value mask ``<m>_mask`` — served eagerly (the mask goes to the model) and through ONNX Runtime (the
masked values get the sensor's learned missing-value scalar before the graph) — and gives what the model
called directly with the same ``<m>_mask`` gives. A sensor that is all nodata, and nodata in a single-date
image (the model has no mask there), are 422s naming the sensor."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from gateway_fixtures import Service, running
from model_fixtures import OFFICIAL_TINY
from rasterio.io import MemoryFile

from model import AnySat, create_model
from model.checkpoint import file_sha256
from model.normalize import normalize
from service.gateway.settings import GatewaySettings
from service.runtime.configuration import ModalityConfig
from service.runtime.export import ExportCache
from service.runtime.runner import EagerBackend, ExportedBackend, ModelRunner

CRS = "EPSG:32632"
T, SIDE = 3, 6  # an s2 series of 3 dates, 60 m at 10 m
PAD = {"s2": 0.37, "s1-asc": -0.5}  # learned missing-value scalars; not 0, so that a mask that is ignored shows
RNG = np.random.default_rng(7)
S2 = RNG.integers(500, 9000, (T, 10, SIDE, SIDE)).astype(np.uint16)
DATES = "2020-04-02,2020-05-17,2020-07-21"
DOY = [93, 138, 203]  # 2020 is a leap year


def model_with_pads() -> AnySat:
    model = create_model(checkpoint=OFFICIAL_TINY)
    with torch.no_grad():
        for name, value in PAD.items():
            model.projectors[name].pad_parameter.fill_(value)
    return model.eval()


def tif(bands: np.ndarray, nodata: float | None, res: float = 10.0) -> bytes:
    with MemoryFile() as mf:
        with mf.open(driver="GTiff", count=bands.shape[0], height=bands.shape[1], width=bands.shape[2],
                     dtype=bands.dtype.name, crs=CRS, nodata=nodata,
                     transform=Affine(res, 0, 500000.0, 0, -res, 5000000.0)) as dst:
            dst.write(bands)
        return mf.read()


@pytest.fixture(scope="module")
def model() -> AnySat:
    return model_with_pads()


@pytest.fixture(scope="module")
def cache(model: AnySat, tmp_path_factory: pytest.TempPathFactory) -> ExportCache:
    return ExportCache(tmp_path_factory.mktemp("exports"), model, file_sha256(OFFICIAL_TINY))


@pytest.fixture(scope="module", params=["eager", "onnx"])
def service(request: pytest.FixtureRequest, redis_url: str, cache: ExportCache) -> Iterator[Service]:
    prefix = f"n{uuid.uuid4().hex[:8]}"
    settings = GatewaySettings(redis_url=redis_url, queue_prefix=prefix, checkpoint=OFFICIAL_TINY,
                               request_deadline_s=120, _env_file=None)  # type: ignore[call-arg]
    worker_model = model_with_pads()  # its own instance: the tests' direct calls must not share the worker's
    backend = EagerBackend(worker_model) if request.param == "eager" else ExportedBackend(cache, "onnx")
    with running(settings, ModelRunner(worker_model, backend)) as service:
        yield service


def post(service: Service, files: dict[str, tuple[str, bytes]], **fields: str) -> httpx.Response:
    data = {"patch_size": "20", "output": "patch", "format": "npy", **fields}
    return httpx.post(f"{service.url}/v1/embeddings", files=files, data=data, timeout=120)


def direct(model: AnySat, s2: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """The model called directly: s2 normalised with the sensor table's statistics, and its ``s2_mask``."""
    data = {"s2": torch.from_numpy(normalize("s2", s2.astype(np.float32)))[None],
            "s2_dates": torch.tensor([DOY])}
    if valid is not None:
        data["s2_mask"] = torch.from_numpy(valid)[None]
    with torch.no_grad():
        return model(data, patch_size=20, output="patch")[0].numpy()


def embedding(r: httpx.Response) -> np.ndarray:
    assert r.status_code == 200, r.text
    return np.load(io.BytesIO(r.content))[0]


def tolerance(service: Service) -> float:
    return 1e-6 if isinstance(service.workers.runner.backend, EagerBackend) else 2e-5


def test_nodata_hole_is_the_models_value_mask(service: Service, model: AnySat) -> None:
    s2 = S2.copy()
    s2[0, :, 1, 1:4] = 0  # a cloud hole on the first date, all bands
    s2[2, :, 4, 4] = 0
    valid = (s2 != 0).any(axis=1, keepdims=True)  # [T, 1, H, W]
    r = post(service, {"s2": ("s2.tif", tif(s2.reshape(-1, SIDE, SIDE), nodata=0))}, s2_dates=DATES)
    served = embedding(r)
    want = direct(model, s2, valid)
    assert np.abs(served - want).max() < tolerance(service)
    # The mask matters: the same values fed as values (zeros) give another answer.
    assert np.abs(served - direct(model, s2, None)).max() > 1e-3
    assert json.loads(r.headers["x-anysat-meta"])["normalization"] == {"s2": "sensor table"}


def test_nan_declared_as_nodata_is_masked(service: Service, model: AnySat) -> None:
    s2 = S2.astype(np.float32)
    s2[1, :, 2, 2] = np.nan
    valid = ~np.isnan(s2).any(axis=1, keepdims=True)
    r = post(service, {"s2": ("s2.tif", tif(s2.reshape(-1, SIDE, SIDE), nodata=np.nan))}, s2_dates=DATES)
    assert np.abs(embedding(r) - direct(model, np.nan_to_num(s2), valid)).max() < tolerance(service)


def test_nodata_in_some_bands_masks_those_bands_only(service: Service, model: AnySat) -> None:
    s2 = S2.copy()
    s2[1, 3, 0, 0] = 65535  # one band of one pixel of one date
    valid = s2 != 65535  # [T, C, H, W]
    r = post(service, {"s2": ("s2.tif", tif(s2.reshape(-1, SIDE, SIDE), nodata=65535))}, s2_dates=DATES)
    assert np.abs(embedding(r) - direct(model, s2, valid)).max() < tolerance(service)


def test_one_file_per_date_with_nodata(service: Service, model: AnySat) -> None:
    s2 = S2.copy()
    s2[2, :, 5, 0:3] = 0
    files = [("s2", (f"s2_{t}.tif", tif(s2[t], nodata=0 if t == 2 else None))) for t in range(T)]
    r = httpx.post(f"{service.url}/v1/embeddings", files=files,
                   data={"patch_size": "20", "output": "patch", "format": "npy", "s2_dates": DATES}, timeout=120)
    assert np.abs(embedding(r) - direct(model, s2, (s2 != 0).any(axis=1, keepdims=True))).max() < tolerance(service)


def test_internal_mask_is_nodata_too(service: Service, model: AnySat) -> None:
    valid = np.ones((SIDE, SIDE), np.bool_)
    valid[3, 0:2] = False
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), MemoryFile() as mf:
        with mf.open(driver="GTiff", count=T * 10, height=SIDE, width=SIDE, dtype="uint16", crs=CRS,
                     transform=Affine(10.0, 0, 500000.0, 0, -10.0, 5000000.0)) as dst:
            dst.write(S2.reshape(-1, SIDE, SIDE))
            dst.write_mask(valid.astype(np.uint8) * 255)
        blob = mf.read()
    r = post(service, {"s2": ("s2.tif", blob)}, s2_dates=DATES)
    want = direct(model, S2, np.broadcast_to(valid, (T, 1, SIDE, SIDE)).copy())
    assert np.abs(embedding(r) - want).max() < tolerance(service)


def test_declared_nodata_that_never_occurs_changes_nothing(service: Service, model: AnySat) -> None:
    r = post(service, {"s2": ("s2.tif", tif(S2.reshape(-1, SIDE, SIDE), nodata=0))}, s2_dates=DATES)
    assert np.abs(embedding(r) - direct(model, S2, None)).max() < tolerance(service)


@pytest.mark.parametrize(("files", "fields", "needle"), [
    ({"s2": ("s2.tif", tif(np.zeros((T * 10, SIDE, SIDE), np.uint16), nodata=0))}, {"s2_dates": DATES},
     "every value of s2 is nodata"),
    ({"s2": ("s2.tif", tif(np.full((T * 10, SIDE, SIDE), np.nan, np.float32), nodata=np.nan))},
     {"s2_dates": DATES}, "every value of s2 is nodata"),
    ({"aerial": ("a.tif", tif(np.pad(np.full((4, 298, 298), 90, np.uint8), ((0, 0), (1, 1), (1, 1))), nodata=0,
                              res=0.2))}, {}, "time series only"),
    ({"s2": ("s2.tif", tif(np.where(np.arange(SIDE) == 2, np.nan, S2.reshape(-1, SIDE, SIDE)).astype(np.float32),
                           nodata=None))}, {"s2_dates": DATES}, "NaN"),
])
def test_unusable_nodata_is_a_422_naming_the_sensor(service: Service, files: dict, fields: dict, needle: str) -> None:
    r = post(service, files, **fields)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert needle in error["message"] and error["field"] in files, error


def test_mixed_batch_with_and_without_masks_equals_solo_runs(model: AnySat, cache: ExportCache) -> None:
    """stack_requests: one request masked per pixel, one per band, one without; different date counts."""
    config = ModalityConfig((("s2", SIDE),), 20, "patch")
    x = normalize("s2", S2.astype(np.float32))
    by_pixel = np.ones((T, 1, SIDE, SIDE), np.bool_)
    by_pixel[0, 0, 2:4, 2] = False
    by_band = np.ones((2, 10, SIDE, SIDE), np.bool_)
    by_band[1, 7, 5, 5] = False
    dates = np.asarray(DOY, np.int64)
    requests = [{"s2": x, "s2_dates": dates, "s2_mask": by_pixel},
                {"s2": x[:2], "s2_dates": dates[:2], "s2_mask": by_band},
                {"s2": x[1:], "s2_dates": dates[1:]}]
    for backend in (EagerBackend(model), ExportedBackend(cache, "onnx")):
        results = ModelRunner(model, backend).run(config.key(), [dict(r) for r in requests])
        for request, result in zip(requests, results, strict=True):
            data = {k: torch.from_numpy(np.ascontiguousarray(v))[None] for k, v in request.items()}
            with torch.no_grad():
                solo = model(data, patch_size=20, output="patch")[0].numpy()
            assert np.abs(result["embedding"] - solo).max() < 2e-5, type(backend).__name__

