"""Student masks: context and targets complementary and exactly what the mask says; one modality per
patch always kept; half of the real dates kept."""

from __future__ import annotations

import math

import pytest
import torch

from training.jepa.masks import (
    apply_masks,
    block_sizes,
    context_indices,
    sample_date_keep,
    sample_masks,
    sample_modality_keep,
    sample_target_mask,
)


@pytest.mark.parametrize("grid", [2, 3, 6, 12])
def test_targets_and_context_partition_the_grid(grid: int) -> None:
    g = torch.Generator().manual_seed(grid)
    for _ in range(50):
        sizes = block_sizes(grid, 4, (0.15, 0.2), (0.75, 1.5), g)
        target = sample_target_mask(grid, sizes, 0.25, g)
        assert target.any(), "at least one target patch"
        assert (~target).sum() >= math.ceil(0.25 * grid * grid), "context never below min_context"


def test_context_indices_are_exactly_the_non_target_patches() -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.rand(5, 16, generator=g) < 0.4
    target[0] = False
    target[0, 3] = True
    idx, valid = context_indices(target)
    for b in range(5):
        got = idx[b][valid[b]].tolist()
        assert got == torch.nonzero(~target[b]).flatten().tolist()  # ascending, exact, no shift
        assert not set(got) & set(torch.nonzero(target[b]).flatten().tolist())
    assert valid.sum(1).tolist() == (~target).sum(1).tolist()


def test_apply_masks_gathers_rows() -> None:
    x = torch.arange(2 * 4 * 3).reshape(2, 4, 3)
    idx = torch.tensor([[3, 0], [1, 2]])
    assert torch.equal(apply_masks(x, idx), torch.stack([x[0, [3, 0]], x[1, [1, 2]]]))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_at_least_one_modality_per_patch(k: int) -> None:
    keep = sample_modality_keep(64, 36, k, 0.9, torch.Generator().manual_seed(k))
    assert keep.any(-1).all()
    if k > 1:
        assert (~keep).any(), "with a high ratio some tokens are masked"


def test_half_of_the_real_dates_are_kept() -> None:
    real = torch.zeros(4, 10, dtype=torch.bool)
    for b, n in enumerate([10, 7, 1, 2]):
        real[b, :n] = True
    keep = sample_date_keep(real, 0.5, torch.Generator().manual_seed(0))
    assert keep.sum(1).tolist() == [5, 3, 1, 1]
    assert not (keep & ~real).any(), "padding is never kept"


def test_sample_masks_on_a_batch() -> None:
    batch = {"s2": torch.zeros(3, 6, 10, 6, 6), "s2_date_mask": torch.tensor([[1, 1, 1, 1, 0, 0]] * 3).bool(),
             "s1-asc": torch.zeros(3, 4, 2, 6, 6)}
    m = sample_masks(batch, 6, ["s2", "s1-asc"], ["s2", "s1-asc"], 4, (0.15, 0.2), (0.75, 1.5), 0.25, 0.5, 0.5,
                     torch.Generator().manual_seed(1))
    assert m.target.shape == (3, 36) and m.modality_keep.shape == (3, 36, 2)
    assert m.date_keep["s2"].sum(1).tolist() == [2, 2, 2] and m.date_keep["s1-asc"].sum(1).tolist() == [2, 2, 2]
    for b in range(3):
        assert sorted(m.context_idx[b][m.context_valid[b]].tolist() + torch.nonzero(m.target[b]).flatten().tolist()) \
            == list(range(36))
