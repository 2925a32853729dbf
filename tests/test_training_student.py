"""The student's fusion path: equal to the model's with nothing masked; blind to dropped patches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from training_fixtures import TINY

from model import create_model
from model.inputs import plan_inputs
from training.config import MaskSpec
from training.data import TileDataset, collate
from training.jepa.masks import StudentMasks, context_indices
from training.jepa.model import JEPAStudent
from training.jepa.student import student_fusion
from training.normalization import resolve_stats


def _batch(root: Path) -> dict[str, torch.Tensor]:
    ds = TileDataset(root, stats=resolve_stats(root, TileDataset(root).sensors))
    batch = collate([ds[i] for i in range(3)])
    return {k: v for k, v in batch.items() if k not in ("id", "label")}


def _masks(target: torch.Tensor, k: int, keep: torch.Tensor | None = None) -> StudentMasks:
    idx, valid = context_indices(target)
    b, p = target.shape
    return StudentMasks(target, idx, valid, torch.ones(b, p, k, dtype=torch.bool) if keep is None else keep, {})


@pytest.mark.parametrize("which", [0, 1])
def test_student_fusion_without_masks_equals_forward_fusion(synthetic_datasets: tuple[Path, Path], which: int) -> None:
    data = _batch(synthetic_datasets[which])
    torch.manual_seed(0)
    enc = create_model("tiny", modalities=tuple(s for s in ("s1-asc", "s2", "modis")), **TINY).double()
    data = {k: v.double() if v.is_floating_point() else v for k, v in data.items()}
    for patch in (10, 20, 30):
        plan = plan_inputs(data, patch)
        tokens, _, ctx = enc.forward_modalities(data, plan)
        expected = enc.forward_fusion(tokens, ctx, plan)[:, 1:]
        target = torch.zeros(3, plan.n_patches, dtype=torch.bool)
        got = student_fusion(enc, tokens, ctx, plan, _masks(target, len(tokens)), torch.zeros(enc.embed_dim))
        assert torch.allclose(got, expected, atol=1e-10), patch


def test_student_never_sees_dropped_patches(synthetic_datasets: tuple[Path, Path]) -> None:
    data = _batch(synthetic_datasets[0])
    torch.manual_seed(0)
    enc = create_model("tiny", modalities=("s1-asc", "s2"), **TINY)
    plan = plan_inputs(data, 20)  # 3 x 3 patches
    tokens, _, _ = enc.forward_modalities(data, plan)
    target = torch.zeros(3, 9, dtype=torch.bool)
    target[0, [0, 4]] = True
    target[1, [8]] = True
    target[2, [1, 2, 5]] = True  # different context sizes: padding in play
    masks = _masks(target, 2)
    out = student_fusion(enc, tokens, None, plan, masks, torch.zeros(enc.embed_dim))
    changed = [t.clone() for t in tokens]
    for t in changed:
        t[target] += 100.0 * torch.randn_like(t[target])
    out2 = student_fusion(enc, changed, None, plan, masks, torch.zeros(enc.embed_dim))
    v = masks.context_valid
    assert torch.allclose(out[v], out2[v], atol=1e-5)
    # ... while a context patch does change the output
    changed[0][0, 1] += torch.randn(enc.embed_dim)
    assert not torch.allclose(student_fusion(enc, changed, None, plan, masks, torch.zeros(enc.embed_dim))[v], out[v])


def test_masked_modality_tokens_become_the_mask_token(synthetic_datasets: tuple[Path, Path]) -> None:
    data = _batch(synthetic_datasets[0])
    torch.manual_seed(0)
    enc = create_model("tiny", modalities=("s1-asc", "s2"), **TINY)
    plan = plan_inputs(data, 20)
    tokens, _, _ = enc.forward_modalities(data, plan)
    keep = torch.ones(3, 9, 2, dtype=torch.bool)
    keep[:, :, 1] = False  # s2 fully masked
    masks = _masks(torch.zeros(3, 9, dtype=torch.bool), 2, keep)
    mask_token = torch.randn(enc.embed_dim)
    a = student_fusion(enc, tokens, None, plan, masks, mask_token)
    b = student_fusion(enc, [tokens[0], torch.randn_like(tokens[1])], None, plan, masks, mask_token)
    assert torch.allclose(a, b, atol=1e-6)


def test_student_forward_shapes(synthetic_datasets: tuple[Path, Path]) -> None:
    from training.config import DatasetSpec
    from training.jepa.data import PretrainData

    data = PretrainData([DatasetSpec(root=str(synthetic_datasets[1]), patch_sizes=(20,), batch_size=2, split=None)],
                        MaskSpec(), seed=0)
    batch = data[0]
    student = JEPAStudent(create_model("tiny", modalities=data.sensors, **TINY), predictor_depth=1)
    out = student(batch.student_data(), plan_inputs(batch.data, 20), batch.masks)
    assert out.pred.shape == (2, 9, TINY["embed_dim"]) and len(out.patch_tokens) == 2  # MODIS is not a patch modality
