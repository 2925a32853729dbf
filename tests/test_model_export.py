"""The model is exportable by design: the TreeSatAI configuration to ONNX with dynamic batch and
date counts, run in a real ONNX Runtime session, matches eager PyTorch."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from model.export import export_onnx, with_date_masks


@pytest.mark.slow
def test_treesat_onnx_dynamic_batch_and_dates(tmp_path, tiny, treesat) -> None:
    path = tmp_path / "treesat_ps20_tile.onnx"
    names = export_onnx(tiny, treesat, path, patch_size=20, output="tile")
    assert names == ["aerial", "s2", "s2_dates", "s2_date_mask", "s1-asc", "s1-asc_dates", "s1-asc_date_mask"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    # Batch 3 (export saw 1) and other date counts (export saw 146 and 60), one row padded + masked.
    data = {k: torch.cat([v, v.flip(-1) if v.ndim > 2 else v, v]) for k, v in treesat.items()}
    data["s2"], data["s2_dates"] = data["s2"][:, :100], data["s2_dates"][:, :100]
    data["s1-asc"], data["s1-asc_dates"] = data["s1-asc"][:, :45], data["s1-asc_dates"][:, :45]
    data = with_date_masks(data)
    data["s2_date_mask"][2, 80:] = False
    with torch.no_grad():
        eager = tiny(data, patch_size=20, output="tile").numpy()
    onnx_out = session.run(None, {n: data[n].numpy() for n in names})[0]
    assert onnx_out.shape == (3, 256)
    assert np.abs(onnx_out - eager).max() < 1e-4
    assert np.abs(onnx_out[0] - onnx_out[1]).max() > 1e-3  # rows really differ: no broadcast bug


def test_dense_export_from_a_one_row_example_keeps_the_batch_dynamic(tmp_path) -> None:
    """A one-row, one-date example used to freeze the dense graph's batch and date count at 1 (the
    tracer's 0/1 specialisation), so every segmentation head failed on ONNX Runtime."""
    from model import create_model
    from service.gateway.settings import DEMO_CHECKPOINT

    model = create_model(checkpoint=DEMO_CHECKPOINT).eval()  # the encoder the land-cover head is served with
    g = torch.Generator().manual_seed(0)
    one = {"l8": torch.randn(1, 1, 11, 12, 12, generator=g), "l8_dates": torch.tensor([[139]])}
    path = tmp_path / "l8_dense.onnx"
    names = export_onnx(model, one, path, patch_size=30, output="dense", output_modality="l8")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"
    data = with_date_masks({"l8": torch.randn(3, 2, 11, 12, 12, generator=g),
                            "l8_dates": torch.tensor([[100, 139]] * 3)})
    with torch.no_grad():
        eager = model(data, patch_size=30, output="dense", output_modality="l8").numpy()
    out = session.run(None, {n: data[n].numpy() for n in names})[0]
    assert out.shape == eager.shape and out.shape[0] == 3
    assert np.abs(out - eager).max() < 1e-4
