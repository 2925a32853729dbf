"""The two pretraining losses (paper eq. 2 and eq. 5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def jepa_loss(pred: torch.Tensor, target: torch.Tensor, dropped: torch.Tensor, kind: str = "l2") -> torch.Tensor:
    """Mean over the dropped patches ``K`` of the per-patch distance, ``pred/target [B, P, D]``,
    ``dropped [B, P]`` bool. ``"l2"``: squared L2 (paper eq. 5) divided by ``D`` so the scale does not
    depend on the width; ``"smooth_l1"``: Huber (β = 1) per element, as the official code."""
    if kind == "l2":
        per_patch = (pred - target).pow(2).mean(-1)
    elif kind == "smooth_l1":
        per_patch = F.smooth_l1_loss(pred, target, reduction="none").mean(-1)
    else:
        raise ValueError(f"jepa loss must be 'l2' or 'smooth_l1', got {kind!r}")
    w = dropped.to(per_patch.dtype)
    return (per_patch * w).sum() / w.sum().clamp(min=1.0)


def contrastive_loss(tokens: list[torch.Tensor], temperature: float = 0.1,
                     positives_in_denominator: bool = True) -> torch.Tensor:
    """Multi-positive InfoNCE across modalities (paper eq. 2) on per-modality patch embeddings.

    ``tokens``: K tensors ``[B, P, D]`` (MODIS excluded). A patch is (sample, position); every token
    ``(p, m)`` is compared by cosine similarity with the tokens ``(q, n)`` of the *other* modalities
    ``n != m`` over all patches of the batch. Positives: ``q = p``. Loss per token:
    ``-log(Σ_pos exp(s/τ) / Σ_den exp(s/τ))``, averaged over the ``K·B·P`` tokens.

    The denominator of eq. 2 as printed runs over ``q != p`` only (negatives). With
    ``positives_in_denominator=True`` (default) it also holds the positives — the standard InfoNCE form
    used by OmniSat and the official code, bounded below by 0; ``False`` gives the printed form.
    Unlike the official code, same-modality tokens of other tiles are never negatives (``n != m``).
    Returns 0 when there is a single modality (no positive pair).
    """
    k = len(tokens)
    if k < 2:
        return tokens[0].sum() * 0.0
    b, p, _ = tokens[0].shape
    n = b * p
    f = F.normalize(torch.cat([t.reshape(n, -1) for t in tokens]), dim=-1)  # (K·N, D)
    sim = f @ f.T / temperature  # (K·N, K·N)
    modality = torch.arange(k, device=f.device).repeat_interleave(n)
    patch = torch.arange(n, device=f.device).repeat(k)
    other_modality = modality[:, None] != modality[None, :]
    same_patch = patch[:, None] == patch[None, :]
    positive = other_modality & same_patch
    denominator = other_modality if positives_in_denominator else other_modality & ~same_patch
    neg_inf = torch.finfo(sim.dtype).min
    log_num = torch.logsumexp(sim.masked_fill(~positive, neg_inf), dim=1)
    log_den = torch.logsumexp(sim.masked_fill(~denominator, neg_inf), dim=1)
    return (log_den - log_num).mean()
