"""Per-modality tokenizers (the paper's ``phi_m^proj``): raw sensor tensor -> sub-patch tokens.

Both return ``[B·P, S, D]`` — ``P`` patches per tile, ``S`` sub-patch tokens per patch, patches in
row-major order with the batch outermost — so the shared patch encoder sees every modality alike.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from .layers.pos_embed import temporal_encoding


class VHRTokenizer(nn.Module):
    """Single-date very-high-resolution image: ``Conv(k, stride k)`` cells -> MLP tokens.

    Token order inside a patch is *block-major* — 10 m blocks in raster order, cells in raster order
    inside each block — as in the official code (the checkpoints were trained with it). It equals
    raster order unless a patch holds several blocks of several cells (aerial at ps >= 20 m).
    """

    def __init__(self, in_chans: int, dim: int, kernel: int, cells_per_block: int) -> None:
        super().__init__()
        self.cells_per_block = cells_per_block
        self.patch_embed = nn.Conv2d(in_chans, dim, kernel_size=kernel, stride=kernel, bias=False)
        self.mlp = nn.Sequential(
            nn.Linear(dim, 2 * dim), nn.LayerNorm(2 * dim), nn.ReLU(),
            nn.Linear(2 * dim, dim), nn.LayerNorm(dim), nn.ReLU(),
        )  # fmt: skip

    def forward(self, x: torch.Tensor, blocks_per_patch: int, grid: int) -> torch.Tensor:
        """``x [B, C, H, W]`` -> ``[B·grid², (blocks_per_patch·G)², D]``."""
        s, g = blocks_per_patch, self.cells_per_block
        cells = self.patch_embed(x)  # (B, D, grid·s·G, grid·s·G)
        d = cells.shape[1]
        # rows/cols split as (patch, block, cell) -> (B, pr, pc, block_r, block_c, cell_r, cell_c, D)
        cells = cells.reshape(-1, d, grid, s, g, grid, s, g).permute(0, 2, 5, 3, 6, 4, 7, 1)
        tokens = cells.reshape(-1, s * s * g * g, d)
        return self.mlp(tokens)


_LTAE_GROUPS = 4  # GroupNorm groups of the L-TAE's MLPs (official architecture)


class LTAE(nn.Module):
    """Lightweight Temporal Attention Encoder (Garnot & Landrieu), applied to every pixel's series.

    A per-date MLP, temporal encoding of day-of-year dates, then 16 master queries attend over the
    dates (values are the features themselves, split into 16 channel groups), then an MLP.
    ``date_mask [B, T]`` (True = real date) keeps padded dates out of the attention and out of the
    ``in_norm`` statistics, so padding a series does not change its output.
    """

    def __init__(self, in_chans: int, dim: int, period: int, heads: int = 16, key_dim: int = 8,
                 in_norm: bool = False) -> None:
        super().__init__()
        if dim // 8 < 2 * _LTAE_GROUPS:
            # GroupNorm over the channels of one pixel-date: a group of one channel normalises to exactly
            # zero, and every later layer then computes on rounding noise (measured at dim 32).
            raise ValueError(f"embed_dim {dim} is too narrow for the time-series tokenizer: its first layer is "
                             f"embed_dim // 8 = {dim // 8} channels under GroupNorm({_LTAE_GROUPS}), and each group "
                             f"needs at least 2 channels; use embed_dim >= {16 * _LTAE_GROUPS}")
        self.heads, self.key_dim, self.period = heads, key_dim, period
        widths = [in_chans, dim // 8, dim // 2, dim, 2 * dim, dim]
        layers: list[nn.Module] = []
        # Four modules per layer, Dropout included, so Linear/GroupNorm keep the official indices
        # (inconv.0, .1, .4, .5, ...) that checkpoints are keyed by.
        for w_in, w_out in itertools.pairwise(widths):
            layers += [nn.Linear(w_in, w_out), nn.GroupNorm(_LTAE_GROUPS, w_out), nn.ReLU(), nn.Dropout(0.0)]
        self.inconv = nn.Sequential(*layers)
        self.in_norm = nn.GroupNorm(heads, dim) if in_norm else None
        self.attention_heads = _MasterQueryAttention(dim, heads, key_dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GroupNorm(_LTAE_GROUPS, dim), nn.ReLU())
        self.out_norm = nn.GroupNorm(heads, dim)

    def forward(self, x: torch.Tensor, dates: torch.Tensor, date_mask: torch.Tensor | None) -> torch.Tensor:
        """``x [B, T, C, H, W]``, ``dates [B, T]`` -> ``[B, D, H, W]``."""
        b, t, c, h, w = x.shape
        series = x.permute(0, 3, 4, 1, 2).reshape(-1, c)  # (B·H·W·T, C): one row per pixel-date
        feats = self.inconv(series).reshape(b, h * w, t, -1)  # (B, HW, T, D)
        d = feats.shape[-1]
        mask = None if date_mask is None else date_mask[:, None, :, None]  # (B, 1, T, 1)
        if self.in_norm is not None:
            feats = _masked_group_norm(feats, self.in_norm, mask)
        pe = temporal_encoding(dates, d // self.heads, self.period, self.heads).to(feats.dtype)
        feats = feats + pe[:, None]  # (B, HW, T, D)
        out = self.attention_heads(feats, mask)  # (B, HW, D)
        out = self.out_norm(self.mlp(out.reshape(-1, d)))
        return out.reshape(b, h, w, d).permute(0, 3, 1, 2)


class _MasterQueryAttention(nn.Module):
    def __init__(self, dim: int, heads: int, key_dim: int) -> None:
        super().__init__()
        self.heads, self.key_dim = heads, key_dim
        self.Q = nn.Parameter(torch.zeros(heads, key_dim))
        self.fc1_k = nn.Linear(dim, heads * key_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``x [B, HW, T, D]``, ``mask [B, 1, T, 1]`` -> ``[B, HW, D]``."""
        *lead, t, d = x.shape
        keys = self.fc1_k(x).reshape(*lead, t, self.heads, self.key_dim)
        scores = torch.einsum("...thk,hk->...th", keys, self.Q) / self.key_dim**0.5  # (B, HW, T, heads)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        attn = torch.softmax(scores, dim=-2)
        values = x.reshape(*lead, t, self.heads, d // self.heads)
        return torch.einsum("...th,...thc->...hc", attn, values).reshape(*lead, d)


def _masked_group_norm(x: torch.Tensor, norm: nn.GroupNorm, mask: torch.Tensor | None) -> torch.Tensor:
    """GroupNorm over (channel group × dates) of each pixel, counting only real dates.

    ``x [B, HW, T, D]``; equals ``norm`` applied to ``[B·HW, D, T]`` when nothing is masked.
    """
    *lead, t, d = x.shape
    g = norm.num_groups
    xg = x.reshape(*lead, t, g, d // g)
    if mask is None:
        mean = xg.mean(dim=(-3, -1), keepdim=True)
        var = xg.var(dim=(-3, -1), keepdim=True, unbiased=False)
    else:
        m = mask[..., None].to(x.dtype)  # (B, 1, T, 1, 1)
        count = m.sum(dim=-3, keepdim=True) * (d // g)
        mean = (xg * m).sum(dim=(-3, -1), keepdim=True) / count
        var = (((xg - mean) * m) ** 2).sum(dim=(-3, -1), keepdim=True) / count
    out = ((xg - mean) / torch.sqrt(var + norm.eps)).reshape(*lead, t, d)
    return out * norm.weight + norm.bias


class LTAETokenizer(nn.Module):
    """Time-series tokenizer: per-pixel L-TAE, then the pixel map cut into patches."""

    def __init__(self, in_chans: int, dim: int, period: int, in_norm: bool) -> None:
        super().__init__()
        # A learned per-sensor "missing value": replaces inputs flagged invalid by ``<m>_mask``.
        self.pad_parameter = nn.Parameter(torch.zeros(()))
        self.patch_embed = LTAE(in_chans, dim, period, in_norm=in_norm)

    def fill_missing(self, x: torch.Tensor, value_mask: torch.Tensor) -> torch.Tensor:
        """``x`` with every value ``value_mask`` flags invalid (0) replaced by the learned missing value."""
        return torch.where(value_mask == 0, self.pad_parameter.to(x.dtype), x)

    def forward(self, x: torch.Tensor, dates: torch.Tensor, pixels_per_patch: int, grid: int,
                value_mask: torch.Tensor | None = None,
                date_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, T, C, H, W]`` -> ``[B·grid², pixels_per_patch², D]``."""
        if value_mask is not None:
            x = self.fill_missing(x, value_mask)
        fmap = self.patch_embed(x, dates, date_mask)  # (B, D, H, W)
        d, p = fmap.shape[1], pixels_per_patch
        fmap = fmap.reshape(-1, d, grid, p, grid, p).permute(0, 2, 4, 3, 5, 1)  # (B, gr, gc, pr, pc, D)
        return fmap.reshape(-1, p * p, d)
