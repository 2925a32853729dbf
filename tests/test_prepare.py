"""Gateway -> worker payloads: raw values in a compact dtype plus statistics, normalised by the worker to the
same bits the gateway would have produced."""

from __future__ import annotations

import numpy as np
import pytest

from model.normalize import normalize
from model.sensors import SENSORS, NormStats
from service.engine.payload import decode, encode
from service.gateway.api.schemas import BandStats
from service.gateway.errors import InputError
from service.gateway.inputs.tile import SensorInput
from service.gateway.prepare import Query, prepare_tile, wire_array
from service.gateway.settings import GatewaySettings
from service.runtime.runner import stack_requests

RNG = np.random.default_rng(0)
AERIAL = RNG.integers(0, 256, (4, 300, 300)).astype(np.uint8)
S2 = RNG.integers(0, 12000, (5, 10, 6, 6))  # int64, as JSON and npz clients send integers
S2_DATES = np.arange(10, 60, 10, dtype=np.int64)


def tile() -> dict[str, SensorInput]:
    return {"aerial": SensorInput("aerial", AERIAL), "s2": SensorInput("s2", S2, S2_DATES, dates_field="s2_dates")}


def worker_batch(query: Query) -> dict[str, np.ndarray]:
    prepared = prepare_tile(tile(), query, GatewaySettings(), "tiles[0]")
    tensors, _ = decode(encode(prepared.tensors))  # through the wire format, as the worker gets it
    return stack_requests(prepared.config, [tensors])


def test_payload_keeps_raw_values_in_compact_dtypes() -> None:
    prepared = prepare_tile(tile(), Query(patch_size=20), GatewaySettings(), "tiles[0]")
    assert prepared.tensors["aerial"].dtype == np.uint8  # 4x smaller than float32 in Redis
    assert prepared.tensors["s2"].dtype == np.uint16  # int64 narrowed: its values fit
    np.testing.assert_array_equal(prepared.tensors["s2"], S2)
    assert prepared.tensors["aerial_stats"].shape == (2, 4)


@pytest.mark.parametrize(("x", "dtype"), [
    (np.array([0, 255], np.int64), np.uint8),
    (np.array([-3, 200], np.int64), np.int16),
    (np.array([0, 60000], np.int32), np.uint16),
    (np.array([-1, 70000], np.int64), np.float32),
    (np.array([0.5, 1e300], np.float64), np.float32),
    (np.array([1, 2], np.float16), np.float16),
    (np.zeros(0, np.int64), np.float32),
    # whole-valued floats are narrowed like integers...
    (np.array([0.0, 255.0], np.float32), np.uint8),
    (np.array([-0.0, 10000.0], np.float32), np.uint16),
    (np.array([-3.0, 200.0], np.float64), np.int16),
    # ...but not when one value has a fraction, even beyond the sample, or is out of range, NaN or infinite
    (np.r_[np.arange(5000.0), 0.5].astype(np.float32), np.float32),
    (np.array([0.0, 70000.0], np.float32), np.float32),
    (np.array([0.0, np.nan], np.float32), np.float32),
    (np.array([0.0, np.inf], np.float64), np.float32),
])
def test_wire_dtype(x: np.ndarray, dtype: type) -> None:
    assert wire_array(x).dtype == dtype


def gateway_normalised(name: str, x: np.ndarray) -> np.ndarray:
    """What the gateway queued before the worker took normalisation over, written out independently."""
    stats = SENSORS[name].stats
    mean = np.asarray(stats.mean, np.float32)[:, None, None]
    std = np.asarray(stats.std, np.float32)[:, None, None]
    return ((x.astype(np.float32) - mean) / std).astype(np.float32)


def test_whole_valued_float_reflectances_travel_as_uint16_and_normalise_to_the_same_bits() -> None:
    s2 = S2.astype(np.float32)  # as the TreeSatAI HDF5 stores Sentinel-2 reflectances
    tile = {"s2": SensorInput("s2", s2, S2_DATES, dates_field="s2_dates")}
    prepared = prepare_tile(tile, Query(patch_size=10), GatewaySettings(), "tiles[0]")
    assert prepared.tensors["s2"].dtype == np.uint16
    tensors, _ = decode(encode(prepared.tensors))
    batch = stack_requests(prepared.config, [tensors])
    np.testing.assert_array_equal(batch["s2"][0], gateway_normalised("s2", s2))


def test_worker_normalises_to_the_same_bits_as_the_gateway_did() -> None:
    batch = worker_batch(Query(patch_size=20))
    assert batch["aerial"].dtype == batch["s2"].dtype == np.float32
    np.testing.assert_array_equal(batch["aerial"][0], gateway_normalised("aerial", AERIAL))
    np.testing.assert_array_equal(batch["s2"][0], gateway_normalised("s2", S2))


def test_custom_statistics_and_no_normalisation() -> None:
    stats = {"aerial": BandStats(mean=[1, 2, 3, 4], std=[5, 6, 7, 8]), "s2": BandStats(mean=[9] * 10, std=[2] * 10)}
    batch = worker_batch(Query(patch_size=20, normalize="custom", stats=stats))
    expected = normalize("aerial", AERIAL, NormStats((1, 2, 3, 4), (5, 6, 7, 8), "test"))
    np.testing.assert_array_equal(batch["aerial"][0], expected)
    raw = worker_batch(Query(patch_size=20, normalize="none"))
    np.testing.assert_array_equal(raw["s2"][0], S2.astype(np.float32))


def test_values_that_overflow_after_normalisation_are_refused() -> None:
    stats = {"aerial": BandStats(mean=[0] * 4, std=[1e-40] * 4), "s2": BandStats(mean=[0] * 10, std=[1] * 10)}
    with pytest.raises(InputError, match="overflow") as info:
        prepare_tile(tile(), Query(patch_size=20, normalize="custom", stats=stats), GatewaySettings(), "tiles[0]")
    assert info.value.field == "aerial"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_whole_valued_floats_with_nan_or_infinity_are_still_refused(bad: float) -> None:
    s2 = S2.astype(np.float32)
    s2[0, 0, 0, 0] = bad  # rint(inf) == inf: only the range check keeps it from being "whole"
    tile = {"s2": SensorInput("s2", s2, S2_DATES, dates_field="s2_dates")}
    with pytest.raises(InputError, match="NaN or infinite") as info:
        prepare_tile(tile, Query(patch_size=10), GatewaySettings(), "tiles[0]")
    assert info.value.field == "s2"


def test_malformed_statistics_fail_the_request_naming_them() -> None:
    prepared = prepare_tile(tile(), Query(patch_size=20), GatewaySettings(), "tiles[0]")
    bad = {**prepared.tensors, "s2_stats": np.ones((2, 3), np.float32)}
    with pytest.raises(ValueError, match=r"s2_stats: expected \[2, 10\]"):
        stack_requests(prepared.config, [bad])
