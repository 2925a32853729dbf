"""The model is exportable by design: the TreeSatAI configuration to ONNX with dynamic batch and
date counts, run in a real ONNX Runtime session, matches eager PyTorch."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch

from model.export import export_onnx, with_date_masks


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
