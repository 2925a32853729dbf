"""The two pretraining losses (paper eq. 2 and eq. 5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


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
                     positives_in_denominator: bool = True, *, chunk_size: int = 4096) -> torch.Tensor:
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

    The ``(K·N)²`` similarity matrix is never built: tokens are processed ``chunk_size`` rows at a time
    (each chunk against all ``K·N`` tokens) and, when gradients are needed, every chunk is recomputed in
    the backward pass rather than stored, so memory is ``O(chunk_size · K·N)`` — at K = 3, B = 16,
    P = 900 the full matrix alone would be 7.5 GB.
    """
    k = len(tokens)
    if k < 2:
        return tokens[0].sum() * 0.0
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    b, p, _ = tokens[0].shape
    n = b * p
    f = F.normalize(torch.cat([t.reshape(n, -1) for t in tokens]), dim=-1)  # (K·N, D)
    # Recomputing in backward only pays off when there is more than one chunk to hold.
    recompute = torch.is_grad_enabled() and f.requires_grad and k * n > chunk_size
    terms = []
    for start in range(0, k * n, chunk_size):
        args = (f[start:start + chunk_size], f, start, k, n, temperature, positives_in_denominator)
        terms.append(checkpoint(_token_terms, *args, use_reentrant=False) if recompute else _token_terms(*args))
    return torch.cat(terms).mean()


def _token_terms(rows: torch.Tensor, f: torch.Tensor, start: int, k: int, n: int, temperature: float,
                 positives_in_denominator: bool) -> torch.Tensor:
    """``log Σ_den - log Σ_pos`` for the tokens ``f[start:start + len(rows)]`` (``rows``), against all of ``f``.

    Token ``i`` is modality ``i // n``, patch ``i % n``; viewing the similarities as ``(rows, K, N)``
    turns both masks into per-modality selections, so no ``rows × K·N`` mask is materialised."""
    sim = (rows @ f.T / temperature).view(len(rows), k, n)  # (c, K, N)
    index = torch.arange(start, start + len(rows), device=f.device)
    own_patch = index % n
    other = torch.arange(k, device=f.device)[None, :] != (index // n)[:, None]  # (c, K): modalities n != m
    neg_inf = torch.finfo(sim.dtype).min
    positives = sim.gather(2, own_patch.view(-1, 1, 1).expand(-1, k, 1)).squeeze(2)  # (c, K): same patch
    log_num = torch.logsumexp(positives.masked_fill(~other, neg_inf), dim=1)
    if not positives_in_denominator:
        same_patch = torch.arange(n, device=f.device)[None, None, :] == own_patch[:, None, None]  # (c, 1, N)
        sim = sim.masked_fill(same_patch, neg_inf)
    per_modality = torch.logsumexp(sim, dim=2)  # (c, K)
    log_den = torch.logsumexp(per_modality.masked_fill(~other, neg_inf), dim=1)
    return log_den - log_num
