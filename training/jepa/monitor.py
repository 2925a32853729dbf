"""Collapse monitoring: JEPA's known failure is every embedding becoming the same vector."""

from __future__ import annotations

import torch


@torch.no_grad()
def embedding_stats(x: torch.Tensor) -> dict[str, float]:
    """``x [..., D]`` -> mean per-dimension std over tokens, and the effective rank
    ``exp(H(σ / Σσ))`` of the centred token matrix (Roy & Vetterli 2007): 1 = collapsed, D = isotropic."""
    z = x.reshape(-1, x.shape[-1]).float()
    std = z.std(dim=0).mean().item() if z.shape[0] > 1 else 0.0
    s = torch.linalg.svdvals(z - z.mean(0, keepdim=True))
    if float(s.sum()) <= 0:
        return {"std": std, "rank": 1.0}
    prob = s / s.sum()
    entropy = -(prob * torch.log(prob.clamp(min=1e-12))).sum()
    return {"std": std, "rank": float(torch.exp(entropy))}
