"""Contextual relative position encoding on keys (iRPE "euclidean", ``ctx`` mode, keys only).

The logit of query ``i`` on key ``j`` gains ``q_i · W[:, bucket(i, j)]`` where ``W`` is a learned
``[head_dim, 8]`` table shared by all heads. Buckets depend only on the grid, so they are integer
constants precomputed per (grid side, skip count) — no data-dependent shapes in the forward pass.
"""

from __future__ import annotations

import torch

from .cache import constant_cache

NUM_BUCKETS = 8
SKIP_BUCKET = 7  # every pair involving a class or MODIS token


@constant_cache
def rpe_buckets(grid: int, n_skip: int = 1) -> torch.Tensor:
    """``[n_skip + grid², n_skip + grid²]`` int64 bucket table.

    For two cells with offset ``(dr, dc)`` and ``d = round(sqrt(dr² + dc²))`` (grid units, not
    metres): bucket 3 if d = 0, 4 if d = 1, 5 if d ∈ {2, 3}, 6 if d ≥ 4 — the official piecewise
    index with α = 1.9, β = 3.8, γ = 15.2 reduces to exactly this on an integer grid.
    """
    k = torch.arange(grid * grid)
    rows, cols = k // grid, k % grid
    dist2 = (rows[:, None] - rows[None, :]) ** 2 + (cols[:, None] - cols[None, :]) ** 2
    d = torch.round(torch.sqrt(dist2.to(torch.float64))).to(torch.int64)
    cells = 3 + torch.clamp(torch.where(d >= 2, torch.where(d >= 4, 3, 2), d), max=3)
    n = n_skip + grid * grid
    table = torch.full((n, n), SKIP_BUCKET, dtype=torch.int64)
    table[n_skip:, n_skip:] = cells
    return table


def rpe_bias(q: torch.Tensor, table_weight: torch.Tensor, buckets: torch.Tensor) -> torch.Tensor:
    """``q [B, H, Lq, hd]``, ``table_weight [hd, 8]``, ``buckets [Lq, Lk]`` (or per sample ``[B, Lq, Lk]``)
    -> ``[B, 1, Lq, Lk]``.

    Only the *first head's* query enters the term, which then applies to every head: the official
    gather indexes the ``[B, H, Lq·8]`` lookup with a ``[B, 1, Lq·Lk]`` index, so it reads head 0
    alone. The released weights were trained that way, so parity requires it.
    """
    per_bucket = q[:, :1] @ table_weight  # (B, 1, Lq, 8)
    buckets = buckets.to(q.device)
    index = buckets[:, None] if buckets.dim() == 3 else buckets.expand(*per_bucket.shape[:2], *buckets.shape)
    return torch.gather(per_bucket, -1, index)
