"""Transformer blocks: RPE self-attention (patch encoder), plain self-attention (joint blocks) and
the learned-query cross-attention of the combiner. All use ``scaled_dot_product_attention`` with
the relative-position term passed as an additive bias, so one fused kernel does the softmax.

Every block's ``forward`` also takes an optional ``attn_mask`` (as timm's ``Attention`` does): an additive
float bias broadcastable to ``[B, H, Lq, Lk]`` (0 = attend, ``-inf`` = hidden), or a bool mask (True =
attend). It is added to the RPE term where there is one; the JEPA student hides key padding with it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .rpe import NUM_BUCKETS, rpe_bias


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[B, L, D] -> [B, H, L, D/H]``."""
    b, n, d = x.shape
    return x.reshape(b, n, heads, d // heads).transpose(1, 2)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              bias: torch.Tensor | None = None) -> torch.Tensor:
    """``softmax(q·kᵀ/√hd + bias)·v``. Eager uses the fused kernel; under ``torch.export`` the plain
    formula is traced instead, because the ONNX decomposition of the fused CPU kernel records
    wrong output strides (its ``[B, L, H, hd]`` result then fails to reshape)."""
    if not torch.compiler.is_exporting():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if bias is not None:
        logits = logits + bias
    return torch.softmax(logits, dim=-1) @ v


def _with_mask(bias: torch.Tensor | None, attn_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """The RPE ``bias`` plus ``attn_mask`` as one additive bias (either may be None)."""
    if attn_mask is None:
        return bias
    if attn_mask.dtype == torch.bool:
        attn_mask = torch.zeros(attn_mask.shape, dtype=dtype, device=attn_mask.device).masked_fill(
            ~attn_mask, float("-inf"))
    return attn_mask if bias is None else bias + attn_mask


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[B, H, L, hd] -> [B, L, H·hd]``."""
    b, h, n, hd = x.shape
    return x.transpose(1, 2).reshape(b, n, h * hd)


class SelfAttention(nn.Module):
    """Multi-head self-attention; with ``rpe=True`` adds the contextual key RPE of the patch encoder
    (computed from the *scaled* query, as the official code scales q before the RPE term)."""

    def __init__(self, dim: int, heads: int, rpe: bool = False, flash_layout_bug: bool = False) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.rpe_table = nn.Parameter(torch.zeros(1, self.head_dim, NUM_BUCKETS)) if rpe else None
        # Official training configs call flash_attn_func with [B, H, N, hd] tensors (it expects
        # [B, N, H, hd]): attention *across heads within a token*. Reproducible on request only.
        self.flash_layout_bug = flash_layout_bug

    def forward(self, x: torch.Tensor, buckets: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, N, D]``; ``buckets [N, N]`` (RPE only); ``attn_mask`` (see the module) -> ``[B, N, D]``."""
        b, n, _d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, N, hd)
        bias = None
        if self.rpe_table is not None:
            assert buckets is not None, "RPE attention needs its bucket table"
            bias = rpe_bias(q * self.head_dim**-0.5, self.rpe_table[0], buckets)
        bias = _with_mask(bias, attn_mask, q.dtype)
        if self.flash_layout_bug:
            if attn_mask is not None:
                raise ValueError("attn_mask cannot apply to flash_layout_bug attention (it mixes heads, not tokens)")
            # Reinterpret (B, H, N, hd) as (B, seq=H, heads=N, hd), as flash_attn_func does.
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))
            out = attention(q, k, v).transpose(1, 2)
        else:
            out = attention(q, k, v, bias)
        return self.proj(_merge_heads(out))


class Block(nn.Module):
    """Pre-norm transformer block: ``x += Attn(LN(x)); x += MLP(LN(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, eps: float, rpe: bool = False,
                 flash_layout_bug: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = SelfAttention(dim, heads, rpe=rpe, flash_layout_bug=flash_layout_bug)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, buckets: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), buckets, attn_mask)
        return x + self.mlp(self.norm2(x))


class LearnedQueryAttention(nn.Module):
    """Cross-attention from input-independent queries (``q_learned + position``) to all tokens,
    with the key RPE computed from the *unscaled* query (as in the official combiner)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.q_learned = nn.Parameter(torch.zeros(1, 1, dim))
        self.wk = nn.Linear(dim, dim)
        self.wv = nn.Linear(dim, dim)
        self.rpe_table = nn.Parameter(torch.zeros(1, self.head_dim, NUM_BUCKETS))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, query_pos: torch.Tensor, buckets: torch.Tensor,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, L, D]``, ``query_pos [Q, D]`` and ``buckets [Q, L]`` (the same queries for every sample) or
        ``[B, Q, D]`` and ``[B, Q, L]`` (per sample), ``attn_mask`` (see the module) -> ``[B, Q, D]``."""
        b = x.shape[0]
        pos = query_pos.to(x)
        q = _split_heads(self.q_learned + (pos[None] if pos.dim() == 2 else pos), self.heads)  # (1 or B, H, Q, hd)
        bias = rpe_bias(q, self.rpe_table[0], buckets)  # (1 or B, 1, Q, L)
        k = _split_heads(self.wk(x), self.heads)  # (B, H, L, hd)
        v = _split_heads(self.wv(x), self.heads)
        q, bias = q.expand(b, -1, -1, -1), bias.expand(b, -1, -1, -1)
        return self.proj(_merge_heads(attention(q, k, v, _with_mask(bias, attn_mask, q.dtype))))


class CombinerBlock(nn.Module):
    """The modality combiner: learned-query cross-attention, then an MLP. There is no residual
    around the cross-attention and no final norm — the official architecture, kept for parity."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = LearnedQueryAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, query_pos: torch.Tensor, buckets: torch.Tensor,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        y = self.attn(self.norm1(x), query_pos, buckets, attn_mask)
        return y + self.mlp(self.norm2(y))
