"""Student masks (paper §3.2), sampled per batch in the collator, I-JEPA style.

* **Patch dropping**: ``n_targets`` rectangles on the ``grid x grid`` patch grid; the patches they
  intersect are the targets ``K`` (dropped for the student), every other patch is context. Context and
  targets are complementary by construction — no separate, smaller context block (the official code's
  tiny context, reference §2.1) and no index shift (reference §4.16).
* **Modality masking**: among the (patch, modality) tokens, a share is replaced by the learned mask
  token; one random modality per patch is always kept.
* **Temporal masking**: every series keeps ``max(1, floor(ratio · n_real))`` of its real dates; the
  others are hidden through ``<m>_date_mask`` (the encoder then ignores them entirely).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class StudentMasks:
    target: torch.Tensor  # (B, P) bool: True = dropped patch (in K)
    context_idx: torch.Tensor  # (B, N) int64: context patch indices, ascending, padded with 0
    context_valid: torch.Tensor  # (B, N) bool: False on padding
    modality_keep: torch.Tensor  # (B, P, K) bool: False = token replaced by f^mask
    date_keep: dict[str, torch.Tensor]  # series name -> (B, T) bool: dates the student sees

    def to(self, device: torch.device | str) -> StudentMasks:
        return StudentMasks(self.target.to(device), self.context_idx.to(device), self.context_valid.to(device),
                            self.modality_keep.to(device), {k: v.to(device) for k, v in self.date_keep.items()})


def apply_masks(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Gather tokens: ``x [B, N, D]``, ``idx [B, n]`` -> ``[B, n, D]`` (I-JEPA's helper)."""
    return torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[-1]))


def block_sizes(grid: int, n: int, scale: tuple[float, float], aspect: tuple[float, float],
                generator: torch.Generator) -> list[tuple[int, int]]:
    """``n`` rectangle sizes (h, w), each of area ``U(scale)·grid²`` and aspect ``U(aspect)``."""
    sizes = []
    for _ in range(n):
        u = torch.rand(2, generator=generator).tolist()
        area = (scale[0] + u[0] * (scale[1] - scale[0])) * grid * grid
        ratio = aspect[0] + u[1] * (aspect[1] - aspect[0])
        cap = max(1, grid - 1)
        h = min(cap, max(1, round(math.sqrt(area * ratio))))
        w = min(cap, max(1, round(math.sqrt(area / ratio))))
        sizes.append((h, w))
    return sizes


def sample_target_mask(grid: int, sizes: list[tuple[int, int]], min_context: float,
                       generator: torch.Generator) -> torch.Tensor:
    """``[grid²]`` bool: union of rectangles of the given sizes at random positions. A rectangle that
    would leave fewer than ``ceil(min_context · grid²)`` context patches is skipped (never the first)."""
    if grid < 2:
        raise ValueError("JEPA needs at least a 2 x 2 patch grid; choose a smaller patch size")
    need = max(1, math.ceil(min_context * grid * grid))
    mask = torch.zeros(grid, grid, dtype=torch.bool)
    for i, (h, w) in enumerate(sizes):
        top = int(torch.randint(0, grid - h + 1, (1,), generator=generator))
        left = int(torch.randint(0, grid - w + 1, (1,), generator=generator))
        trial = mask.clone()
        trial[top:top + h, left:left + w] = True
        if i == 0 or int((~trial).sum()) >= need:
            mask = trial
    return mask.flatten()


def sample_modality_keep(b: int, p: int, k: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """``[B, P, K]`` bool: each token kept with probability ``1 - ratio``, one modality per patch always."""
    keeper = torch.randint(0, k, (b, p), generator=generator)
    keep = torch.rand(b, p, k, generator=generator) >= ratio
    return keep | torch.nn.functional.one_hot(keeper, k).bool()


def sample_date_keep(real: torch.Tensor, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """``real [B, T]`` bool -> ``[B, T]`` bool: a random ``max(1, floor(ratio·n))`` of each row's real dates."""
    n_keep = torch.clamp(torch.floor(real.sum(1) * ratio), min=1).to(torch.int64)  # (B,)
    scores = torch.rand(real.shape, generator=generator).masked_fill(~real, 2.0)  # padding sorts last
    ranks = scores.argsort(dim=1).argsort(dim=1)
    return (ranks < n_keep[:, None]) & real


def context_indices(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``target [B, P]`` -> context indices ``[B, N]`` (ascending, padded with 0) and validity ``[B, N]``."""
    context = ~target
    n = int(context.sum(1).max())
    # Stable sort puts context patches first, in ascending order.
    order = torch.sort((~context).to(torch.int8), dim=1, stable=True).indices[:, :n]
    valid = torch.gather(context, 1, order)
    return torch.where(valid, order, torch.zeros_like(order)), valid


def sample_masks(batch: dict[str, torch.Tensor], grid: int, modalities: list[str], series: list[str],
                 n_targets: int, target_scale: tuple[float, float], aspect_ratio: tuple[float, float],
                 min_context: float, modality_mask_ratio: float, date_keep_ratio: float,
                 generator: torch.Generator) -> StudentMasks:
    """All student masks for one batch. ``modalities``: the patch modalities in model order (MODIS
    excluded); ``series``: the time-series inputs to thin out (MODIS included)."""
    b = next(iter(batch[m] for m in modalities)).shape[0]
    sizes = block_sizes(grid, n_targets, target_scale, aspect_ratio, generator)  # one size set per batch
    target = torch.stack([sample_target_mask(grid, sizes, min_context, generator) for _ in range(b)])
    idx, valid = context_indices(target)
    keep = sample_modality_keep(b, grid * grid, len(modalities), modality_mask_ratio, generator)
    dates = {}
    for m in series:
        real = batch.get(f"{m}_date_mask")
        real = torch.ones(batch[m].shape[:2], dtype=torch.bool) if real is None else real.to(torch.bool)
        dates[m] = sample_date_keep(real, date_keep_ratio, generator)
    return StudentMasks(target, idx, valid, keep, dates)
