"""The README example on the real TreeSatAI-TS tile: reading + normalising the raw GeoTIFF/HDF5
reproduces the official demo's inputs, and hence the official outputs."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from treesatai_embeddings import load_tile


def _by_date(x: torch.Tensor, dates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.argsort(dates[0], stable=True)
    return x[:, order], dates[:, order]


def test_example_inputs_match_official_demo(treesat) -> None:
    ours = load_tile()
    assert list(ours) == ["aerial", "s2", "s2_dates", "s1-asc", "s1-asc_dates"]
    assert torch.allclose(ours["aerial"], treesat["aerial"], atol=1e-6)
    for m in ("s2", "s1-asc"):
        x, d = _by_date(treesat[m], treesat[f"{m}_dates"])
        assert torch.equal(ours[f"{m}_dates"], d)
        assert torch.allclose(ours[m], x, atol=1e-5)


def test_example_reproduces_official_tile_embedding(tiny, reference_dir) -> None:
    expected = torch.load(reference_dir / "outputs_treesat.pt", weights_only=True)["treesat__ps20__tile"]
    with torch.no_grad():
        out = tiny(load_tile(), patch_size=20, output="tile")
    assert (out - expected).abs().max() < 1e-4  # dates reordered: L-TAE is order-invariant to ~1e-6
