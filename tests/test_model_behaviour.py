"""Behaviour beyond the reference: padding-neutral series, spatially correct dense maps, sizes."""

from __future__ import annotations

import pytest
import torch

from model import create_model


def _pad_series(data: dict, m: str, extra: int, seed: int = 0) -> dict:
    """Append ``extra`` garbage dates to series ``m`` and mask them out."""
    g = torch.Generator().manual_seed(seed)
    x, dates = data[m], data[f"{m}_dates"]
    b, t = dates.shape
    junk = torch.randn(b, extra, *x.shape[2:], generator=g) * 3
    out = dict(data)
    out[m] = torch.cat([x, junk], dim=1)
    out[f"{m}_dates"] = torch.cat([dates, torch.randint(1, 366, (b, extra), generator=g)], dim=1)
    out[f"{m}_date_mask"] = torch.cat([torch.ones(b, t, dtype=torch.bool),
                                       torch.zeros(b, extra, dtype=torch.bool)], dim=1)
    return out


@pytest.mark.parametrize("modality", ["s2", "s1-asc"])
@pytest.mark.parametrize("output", ["tile", "all"])
def test_masked_padding_is_neutral(tiny, treesat, modality, output) -> None:
    with torch.no_grad():
        plain = tiny(treesat, patch_size=20, output=output)
        padded = tiny(_pad_series(treesat, modality, 4), patch_size=20, output=output)
        # Without the mask, the same padding changes the output: the test would catch a no-op mask.
        unmasked = {k: v for k, v in _pad_series(treesat, modality, 4).items() if not k.endswith("_date_mask")}
        drift = tiny(unmasked, patch_size=20, output=output)
    assert (padded - plain).abs().max() < 2e-5
    assert (drift - plain).abs().max() > 1e-3


def test_all_valid_date_mask_is_a_no_op(tiny, treesat) -> None:
    data = dict(treesat, **{"s2_date_mask": torch.ones(1, 146, dtype=torch.bool)})
    with torch.no_grad():
        diff = (tiny(data, patch_size=20, output="all") - tiny(treesat, patch_size=20, output="all")).abs()
    assert diff.max() < 1e-6


def test_batch_of_different_date_counts_equals_solo_runs(tiny, treesat) -> None:
    short = dict(treesat, s2=treesat["s2"][:, :90], s2_dates=treesat["s2_dates"][:, :90])
    padded_short = _pad_series(short, "s2", 146 - 90)
    batch = {k: torch.cat([v, padded_short[k]]) for k, v in _pad_series(treesat, "s2", 0).items()}
    with torch.no_grad():
        out = tiny(batch, patch_size=20, output="dense", output_modality="s2")
        solo = [tiny(treesat, patch_size=20, output="dense", output_modality="s2"),
                tiny(short, patch_size=20, output="dense", output_modality="s2")]
    for row, ref in enumerate(solo):
        assert (out[row] - ref[0]).abs().max() < 2e-5


def _dense_response(model, data, cell, dense_layout):
    """Dense position whose sub-patch features move most when one 2 m aerial cell is perturbed."""
    r, c = cell
    bumped = dict(data, aerial=data["aerial"].clone())
    bumped["aerial"][:, :, r * 10:(r + 1) * 10, c * 10:(c + 1) * 10] += 5.0
    with torch.no_grad():
        a = model(data, patch_size=20, output="dense", output_modality="aerial", dense_layout=dense_layout)
        b = model(bumped, patch_size=20, output="dense", output_modality="aerial", dense_layout=dense_layout)
    change = (b - a)[0, :, :, model.embed_dim:].abs().sum(-1)  # sub-patch half only
    flat = int(change.argmax())
    return divmod(flat, change.shape[1])


@pytest.mark.parametrize("cell", [(0, 7), (3, 1), (12, 17), (29, 24)])
def test_dense_default_is_spatially_correct(tiny, treesat, cell) -> None:
    assert _dense_response(tiny, treesat, cell, "spatial") == cell


def test_dense_reference_layout_is_permuted_as_documented(tiny, treesat) -> None:
    # Reference doc §1.9: at ps = 20 m the feature of local 2 m cell (0, 7) sits at (2, 7).
    assert _dense_response(tiny, treesat, (0, 7), "reference") == (2, 7)


def test_layouts_agree_where_order_is_raster(tiny, treesat) -> None:
    data = {k: treesat[k] for k in ("s2", "s2_dates", "s1-asc", "s1-asc_dates")}
    with torch.no_grad():
        a = tiny(data, patch_size=20, output="dense", dense_layout="spatial")
        b = tiny(data, patch_size=20, output="dense", dense_layout="reference")
    assert torch.equal(a, b)


@pytest.mark.parametrize(("modality", "patch_size", "side"), [("l7", 90, 6), ("alos", 30, 6), ("spot", 30, 18),
                                                               ("s2", 60, 18)])
def test_dense_every_layout_for_non_aerial_sensors(tiny, modality, patch_size, side) -> None:
    """Only multi-cell VHR blocks are reordered; every other sensor's map is raster in both layouts."""
    g = torch.Generator().manual_seed(0)
    data = {"s2": torch.randn(1, 3, 10, 18, 18, generator=g), "s2_dates": torch.tensor([[10, 100, 200]]),
            "l7": torch.randn(1, 2, 6, 6, 6, generator=g), "l7_dates": torch.tensor([[50, 150]]),
            "alos": torch.randn(1, 2, 3, 6, 6, generator=g), "alos_dates": torch.tensor([[60, 160]]),
            "spot": torch.randn(1, 3, 180, 180, generator=g)}
    with torch.no_grad():
        spatial = tiny(data, patch_size=patch_size, output="dense", output_modality=modality)
        reference = tiny(data, patch_size=patch_size, output="dense", output_modality=modality,
                         dense_layout="reference")
    assert spatial.shape == (1, side, side, 512)
    assert torch.equal(spatial, reference)


def test_output_shapes_and_tile_equals_all_row0(tiny, treesat) -> None:
    with torch.no_grad():
        tile = tiny(treesat, patch_size=30, output="tile")
        allv = tiny(treesat, patch_size=30, output="all")
        patch = tiny(treesat, patch_size=30, output="patch")
    assert tile.shape == (1, 256) and allv.shape == (1, 5, 256) and patch.shape == (1, 2, 2, 256)
    assert torch.allclose(tile, allv[:, 0]) and torch.allclose(patch.reshape(1, 4, 256), allv[:, 1:])


@pytest.mark.parametrize(("name", "params"), [("tiny", 8_135_015), ("small", 43_811_271),
                                              ("base", 125_905_447)])
def test_parameter_counts_match_reference(name, params) -> None:
    assert sum(p.numel() for p in create_model(name).parameters()) == params


def test_flash_layout_bug_option_changes_joint_attention(tiny, treesat) -> None:
    buggy = create_model("tiny", flash_layout_bug=True)
    buggy.load_state_dict(tiny.state_dict())
    with torch.no_grad():
        diff = (buggy(treesat, patch_size=20) - tiny(treesat, patch_size=20)).abs().max()
    assert diff > 1e-3


def test_too_narrow_for_the_time_series_tokenizer_is_refused() -> None:
    from model import create_model

    # embed_dim 32: the L-TAE's first layer would be 4 channels under GroupNorm(4), one per group -> always 0
    with pytest.raises(ValueError, match=r"embed_dim 32 is too narrow.*embed_dim >= 64"):
        create_model("tiny", embed_dim=32, depth=1, num_heads=2, modalities=("s2",))
    create_model("tiny", embed_dim=64, depth=1, num_heads=2, modalities=("s2",))
