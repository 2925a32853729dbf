"""Sinusoidal tables: 2-D grid positions (GSD-aware) and day-of-year temporal encodings.

Tables are computed in float32 and only then cast, exactly like the official code: a float64 model
reproduces float64 reference outputs to ~1e-15 only with float32-rounded tables.
"""

from __future__ import annotations

import torch

from .cache import constant_cache


def sincos_1d(pos: torch.Tensor, dim: int) -> torch.Tensor:
    """``[N] -> [N, dim]``: all sines first, then all cosines, ``omega_k = 10000^(-k / (dim/2))``."""
    omega = torch.arange(dim // 2, dtype=torch.float32) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = torch.einsum("m,d->md", pos.to(torch.float32), omega)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


@constant_cache
def grid_pos_embed(grid: int, dim: int, unit: float, n_skip: int = 1) -> torch.Tensor:
    """``[n_skip + grid², dim]`` float32: zero rows for the skip slots (class / MODIS), then the
    ``grid x grid`` cells in raster order, positions in metres (cell index × ``unit``).

    Each row is ``[sincos(col·unit; dim/2), sincos(row·unit; dim/2)]`` — column first.
    Cached: one constant per (grid, dim, unit) configuration, never recomputed in a forward pass.
    """
    coords = torch.arange(grid, dtype=torch.float32)
    rows = coords.repeat_interleave(grid)  # token r·grid + c -> r
    cols = coords.repeat(grid)  # -> c
    pe = torch.cat([sincos_1d(cols * unit, dim // 2), sincos_1d(rows * unit, dim // 2)], dim=1)
    return torch.cat([torch.zeros(n_skip, dim), pe], dim=0)


@constant_cache
def _temporal_denominator(dim: int, period: int) -> torch.Tensor:
    return torch.pow(float(period), 2 * (torch.arange(dim, dtype=torch.float32) // 2) / dim)


def temporal_encoding(dates: torch.Tensor, dim: int, period: int, repeat: int) -> torch.Tensor:
    """L-TAE encoding of day-of-year ``dates [B, T] -> [B, T, dim·repeat]`` (float32).

    Channel ``j`` of each ``dim``-block: ``sin`` (even j) / ``cos`` (odd j) of
    ``doy / period^(2⌊j/2⌋/dim)``; the block is tiled ``repeat`` times (once per L-TAE head).
    """
    angles = dates.to(torch.float32)[..., None] / _temporal_denominator(dim, period).to(dates.device)
    even = (torch.arange(dim, device=dates.device) % 2) == 0
    table = torch.where(even, torch.sin(angles), torch.cos(angles))
    return table.repeat(1, 1, repeat)
