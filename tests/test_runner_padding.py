"""A batch whose series lengths differ is split where padding to the longest would pass ``max_padding``; the
results are each request's own, in the request order, whatever the split."""

from __future__ import annotations

import numpy as np
import pytest

from model import AnySat
from service.runtime.configuration import ModalityConfig
from service.runtime.runner import ModelRunner, padding_groups

CONFIG = ModalityConfig((("s2", 6), ("s1-asc", 6)), patch_size=20, output="tile")


def request(rng: np.random.Generator, t_s2: int, t_s1: int = 4) -> dict[str, np.ndarray]:
    return {"s2": rng.normal(size=(t_s2, 10, 6, 6)).astype(np.float32),
            "s2_dates": np.sort(rng.choice(np.arange(1, 366), t_s2, replace=False)),
            "s1-asc": rng.normal(size=(t_s1, 2, 6, 6)).astype(np.float32),
            "s1-asc_dates": np.sort(rng.choice(np.arange(1, 366), t_s1, replace=False))}


def test_groups_keep_padding_within_the_ratio() -> None:
    rng = np.random.default_rng(0)
    reqs = [request(rng, t) for t in (12, 2, 3, 11, 2, 12)]
    groups = padding_groups(CONFIG, reqs, 1.25)
    assert sorted(i for g in groups for i in g) == list(range(6))
    assert [sorted(g) for g in groups] == [[1, 2, 4], [0, 3, 5]]  # the short series apart from the long ones
    assert padding_groups(CONFIG, reqs, float("inf")) == [list(range(6))]
    assert padding_groups(CONFIG, [request(rng, t) for t in (5, 5, 5)], 1.0) == [[0, 1, 2]]  # nothing padded


@pytest.mark.parametrize("max_padding", [1.0, 1.25, float("inf")])
def test_split_batches_answer_each_request_as_alone(tiny: AnySat, max_padding: float) -> None:
    rng = np.random.default_rng(1)
    reqs = [request(rng, t) for t in (9, 2, 5, 2, 9)]
    runner = ModelRunner(tiny)
    runner.max_padding = max_padding
    batched = runner.run(CONFIG.key(), reqs)
    for r, got in zip(reqs, batched, strict=True):
        alone = runner.run(CONFIG.key(), [r])[0]["embedding"]
        np.testing.assert_allclose(got["embedding"], alone, rtol=1e-4, atol=1e-5)
