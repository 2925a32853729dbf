"""Bad inputs fail with a ValueError naming the modality and what was expected — never silently."""

from __future__ import annotations

import pytest
import torch

from model import plan_inputs


def _series(b: int = 1, t: int = 3, c: int = 10, side: int = 6) -> torch.Tensor:
    return torch.zeros(b, t, c, side, side)


def _dates(b: int = 1, t: int = 3) -> torch.Tensor:
    return torch.arange(1, t + 1).repeat(b, 1)


def _treesat(**over: torch.Tensor) -> dict[str, torch.Tensor]:
    data = {"aerial": torch.zeros(1, 4, 300, 300), "s2": _series(), "s2_dates": _dates(),
            "s1-asc": _series(c=2), "s1-asc_dates": _dates()}
    data.update(over)
    return data


BAD = [
    ("unknown modality", {"landsat9": torch.zeros(1, 3, 6, 6)}, 10, "'landsat9' is not a modality"),
    ("wrong rank aerial", _treesat(aerial=torch.zeros(4, 300, 300)), 10, "aerial: expected a 4-D tensor"),
    ("wrong rank s2", _treesat(s2=torch.zeros(1, 10, 6, 6)), 10, "s2: expected a 5-D tensor"),
    ("wrong channels", _treesat(aerial=torch.zeros(1, 3, 300, 300)), 10, "aerial: expected 4 channels"),
    ("s2 channels", _treesat(s2=_series(c=9)), 10, "s2: expected 10 channels (B2, B3"),
    ("not square", _treesat(aerial=torch.zeros(1, 4, 300, 250)), 10, "aerial: tiles must be square"),
    ("extent mismatch", _treesat(aerial=torch.zeros(1, 4, 250, 250)), 10,
     "s2: covers 60 m (6 px x 10 m) but aerial covers 50 m"),
    ("patch does not divide", _treesat(), 40, "patch_size 40 m does not divide the tile side 60 m"),
    ("patch not multiple of 10", _treesat(), 15, "positive multiple of 10"),
    ("patch zero", _treesat(), 0, "positive multiple of 10"),
    ("missing dates", {"s2": _series()}, 10, "s2: time series need s2_dates"),
    ("dates wrong length", {"s2": _series(), "s2_dates": _dates(t=4)}, 10,
     "s2_dates must have shape [B, T] = [1, 3]"),
    ("date mask wrong shape", {"s2": _series(), "s2_dates": _dates(), "s2_date_mask": torch.ones(1, 5)}, 10,
     "s2_date_mask must have shape"),
    ("value mask wrong shape", {"s2": _series(), "s2_dates": _dates(), "s2_mask": torch.ones(1, 3, 2, 6, 6)},
     10, "s2_mask must have shape"),
    ("dates without series", {"s2_dates": _dates(), "s1-asc": _series(c=2), "s1-asc_dates": _dates()}, 10,
     "s2_dates given without the 's2' tensor"),
    ("dates on single-date", _treesat(aerial_dates=_dates()), 10, "aerial: is a single-date modality"),
    ("batch mismatch", _treesat(s2=_series(b=2), s2_dates=_dates(b=2)), 10, "s2: batch size 2 differs"),
    ("integer image", _treesat(aerial=torch.zeros(1, 4, 300, 300, dtype=torch.uint8)), 10,
     "aerial: expected a floating-point tensor"),
    ("l7 patch not multiple of 30", {"l7": _series(c=6, side=4), "l7_dates": _dates()}, 20,
     "l7: pixels are 30 m; patch_size must be a multiple of 30"),
    ("modis alone", {"modis": _series(c=7, side=1), "modis_dates": _dates()}, 10, "modis is a context token"),
    ("modis not one pixel", {"s2": _series(side=12), "s2_dates": _dates(),
                             "modis": _series(c=7, side=2), "modis_dates": _dates()}, 30,
     "modis: is a one-pixel context token"),
    ("not a tensor", {"s2": [[1.0]], "s2_dates": _dates()}, 10, "s2: expected a torch.Tensor"),
    ("empty", {}, 10, "non-empty dict"),
]


@pytest.mark.parametrize(("data", "patch_size", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_names_the_problem(data, patch_size, message) -> None:
    with pytest.raises(ValueError) as info:
        plan_inputs(data, patch_size)
    assert message in str(info.value)


def test_bad_output_arguments() -> None:
    with pytest.raises(ValueError, match="output must be one of"):
        plan_inputs(_treesat(), 10, output="pixels")
    with pytest.raises(ValueError, match="output_modality must be one of the input modalities"):
        plan_inputs(_treesat(), 10, output="dense", output_modality="spot")


def test_plan_geometry_treesat() -> None:
    plan = plan_inputs(_treesat(), 20, output="dense")
    assert (plan.grid, plan.scale, plan.output_modality) == (3, 2, "aerial")  # default: first key
    aerial, s2, s1 = plan.modalities
    assert (aerial.subgrid, aerial.tokens_per_patch, aerial.pixels_per_patch) == (10, 100, 100)
    assert (s2.subgrid, s1.subgrid) == (2, 2)


def test_plan_geometry_l7_alos_reduce_scale() -> None:
    data = {"s2": _series(side=12), "s2_dates": _dates(), "l7": _series(c=6, side=4), "l7_dates": _dates(),
            "alos": _series(c=3, side=4), "alos_dates": _dates()}
    plan = plan_inputs(data, 60)
    assert [m.subgrid for m in plan.modalities] == [6, 2, 2]


def test_model_without_projector_refuses(tiny) -> None:
    from model import create_model

    small = create_model("tiny", modalities=("s2",))
    with pytest.raises(ValueError, match=r"no projector for \['s1-asc'\]"):
        small({"s2": _series(), "s2_dates": _dates(), "s1-asc": _series(c=2), "s1-asc_dates": _dates()})
    with pytest.raises(ValueError, match="dense_layout must be one of"):
        tiny({"s2": _series(), "s2_dates": _dates()}, dense_layout="transposed")
