"""The student's view of the encoder's fusion stage (paper eq. 3), composed from the model's own modules.

``AnySat.forward_fusion`` runs the joint blocks over every patch and queries the combiner at every
position. The student must instead see only its context patches: the per-modality tokens of the
context patches are gathered (padded to the longest context in the batch, padding hidden from
attention by a ``-inf`` key bias passed as the blocks' ``attn_mask``), the joint blocks run on them alone,
and the combiner is queried only at context positions with its RPE bucket table restricted to those
positions. With an empty mask this reproduces ``forward_fusion`` exactly (tested); no weight here is the
student's own, and every block runs through its public ``forward``.
"""

from __future__ import annotations

import torch
from torch import nn

from model.encoder import AnySat
from model.inputs import Plan
from model.layers.attention import Block
from model.layers.pos_embed import grid_pos_embed
from model.layers.rpe import rpe_buckets
from training.jepa.masks import StudentMasks, apply_masks


def key_bias(valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``valid [B, L]`` bool -> additive attention bias ``[B, 1, 1, L]``: 0 for real keys, -inf for padding."""
    bias = torch.zeros(valid.shape, dtype=dtype, device=valid.device).masked_fill(~valid, float("-inf"))
    return bias[:, None, None, :]


def student_fusion(encoder: AnySat, patch_tokens: list[torch.Tensor], context: torch.Tensor | None,
                   plan: Plan, masks: StudentMasks, mask_token: torch.Tensor) -> torch.Tensor:
    """Multimodal embeddings ``f*_{p,S}`` of the context patches, ``[B, N, D]`` (aligned with
    ``masks.context_idx``; rows where ``masks.context_valid`` is False are padding).

    ``patch_tokens``: per-modality ``[B, P, D]`` from ``forward_modalities`` (before positions);
    ``context``: the MODIS token ``[B, 1, D]`` or None; ``mask_token``: ``f^mask`` ``[D]``.
    """
    d, k = encoder.embed_dim, len(patch_tokens)
    b = patch_tokens[0].shape[0]
    n_skip = 1 if context is None else 2
    idx, valid = masks.context_idx, masks.context_valid  # (B, N)
    n = idx.shape[1]
    pos = grid_pos_embed(plan.grid, d, float(plan.scale), n_skip).to(patch_tokens[0])  # (n_skip + P, D)
    ctx_pos = pos[n_skip:][idx]  # (B, N, D)
    keep = torch.gather(masks.modality_keep, 1, idx[..., None].expand(-1, -1, k))  # (B, N, K)

    # (1) context tokens of every modality; masked ones become f^mask; then positions (eq. 3)
    tokens = [encoder.cls_token.expand(b, -1, -1)]
    if context is not None:
        tokens.append(context)
    for j, t in enumerate(patch_tokens):
        t = torch.where(keep[..., j:j + 1], apply_masks(t, idx), mask_token.to(t))  # (B, N, D)
        tokens.append(t + ctx_pos)
    x = torch.cat(tokens, dim=1)  # (B, n_skip + K·N, D)
    key_valid = torch.cat([torch.ones(b, n_skip, dtype=torch.bool, device=x.device), valid.repeat(1, k)], 1)
    bias = key_bias(key_valid, x.dtype)

    # (2) joint transformer over context tokens only (a flash_layout_bug model mixes heads, not tokens: the
    # blocks refuse a mask for it)
    for block in encoder.joint_blocks:
        x = block(x, attn_mask=bias)

    # (3) combiner queried at the context positions, RPE restricted to them
    full = rpe_buckets(plan.grid, n_skip).to(x.device)  # (n_skip + P, n_skip + P)
    rows = idx + n_skip  # (B, N)
    skip = torch.arange(n_skip, device=x.device).expand(b, -1)
    cols = torch.cat([skip, rows.repeat(1, k)], dim=1)  # (B, n_skip + K·N)
    buckets = full[rows[:, :, None], cols[:, None, :]]  # (B, N, n_skip + K·N)
    assert buckets.shape == (b, n, x.shape[1])
    return encoder.combiner(x, ctx_pos, buckets, bias)  # per-sample queries and buckets: (B, N, D)


class Predictor(nn.Module):
    """``phi^pred`` (paper eq. 4): context embeddings (projected) at their positions, the learned drop
    token ``f^drop`` at every dropped position, positions added to all; self-attention blocks; the
    embeddings predicted for every patch ``[B, P, D]`` (the loss reads the dropped ones)."""

    def __init__(self, dim: int, pred_dim: int, depth: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.pred_dim = pred_dim
        self.embed = nn.Linear(dim, pred_dim)
        self.drop_token = nn.Parameter(torch.zeros(1, 1, pred_dim))
        self.blocks = nn.ModuleList(Block(pred_dim, heads, mlp_ratio, eps=1e-6) for _ in range(depth))
        self.norm = nn.LayerNorm(pred_dim, eps=1e-6)
        self.proj = nn.Linear(pred_dim, dim)
        nn.init.trunc_normal_(self.drop_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, context_out: torch.Tensor, masks: StudentMasks, grid: int, scale: int) -> torch.Tensor:
        b, p = context_out.shape[0], grid * grid
        emb = self.embed(context_out)  # (B, N, Dp)
        # Scatter context embeddings to their patches; padding goes to a spare slot P, then dropped.
        slot = torch.where(masks.context_valid, masks.context_idx, torch.full_like(masks.context_idx, p))
        x = torch.cat([self.drop_token.expand(b, p, -1), emb.new_zeros(b, 1, self.pred_dim)], dim=1)
        x = x.scatter(1, slot[..., None].expand(-1, -1, self.pred_dim), emb)[:, :p]  # (B, P, Dp)
        x = x + grid_pos_embed(grid, self.pred_dim, float(scale), 0).to(x)
        for block in self.blocks:
            x = block(x)
        return self.proj(self.norm(x))  # (B, P, D)
