"""Losses, EMA and schedules against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from training.jepa.losses import contrastive_loss, jepa_loss
from training.jepa.monitor import embedding_stats
from training.schedules import cosine_lr, ema_momentum, ema_update


def _hand_contrastive(positives_in_denominator: bool) -> float:
    # Two modalities, one tile, two patches, 2-D unit vectors at angles (degrees).
    ang = {("a", 0): 0.0, ("a", 1): 90.0, ("b", 0): 30.0, ("b", 1): 180.0}

    def cos(u: tuple[str, int], v: tuple[str, int]) -> float:
        return math.cos(math.radians(ang[u] - ang[v]))

    total = 0.0
    for m, n in (("a", "b"), ("b", "a")):
        for p in (0, 1):
            pos = math.exp(cos((m, p), (n, p)) / 0.1)
            neg = math.exp(cos((m, p), (n, 1 - p)) / 0.1)
            total += -math.log(pos / ((pos + neg) if positives_in_denominator else neg))
    return total / 4


@pytest.mark.parametrize("with_positives", [True, False])
def test_contrastive_loss_matches_hand_computation(with_positives: bool) -> None:
    def vec(deg: float, scale: float) -> list[float]:
        return [scale * math.cos(math.radians(deg)), scale * math.sin(math.radians(deg))]

    a = torch.tensor([[vec(0, 2.0), vec(90, 0.5)]], dtype=torch.float64)  # norms must not matter (cosine)
    b = torch.tensor([[vec(30, 1.0), vec(180, 3.0)]], dtype=torch.float64)
    got = contrastive_loss([a, b], temperature=0.1, positives_in_denominator=with_positives)
    assert got.item() == pytest.approx(_hand_contrastive(with_positives), rel=1e-12)


def test_contrastive_loss_single_modality_is_zero() -> None:
    assert contrastive_loss([torch.randn(2, 4, 8)]).item() == 0.0


def _full_matrix_contrastive(tokens: list[torch.Tensor], temperature: float,
                             positives_in_denominator: bool) -> torch.Tensor:
    """The unchunked formula (the whole (K·N)² similarity matrix at once), kept as the reference."""
    k, (b, p, _) = len(tokens), tokens[0].shape
    n = b * p
    f = torch.nn.functional.normalize(torch.cat([t.reshape(n, -1) for t in tokens]), dim=-1)
    sim = f @ f.T / temperature
    modality, patch = torch.arange(k).repeat_interleave(n), torch.arange(n).repeat(k)
    other_modality = modality[:, None] != modality[None, :]
    same_patch = patch[:, None] == patch[None, :]
    denominator = other_modality if positives_in_denominator else other_modality & ~same_patch
    neg_inf = torch.finfo(sim.dtype).min
    log_num = torch.logsumexp(sim.masked_fill(~(other_modality & same_patch), neg_inf), dim=1)
    log_den = torch.logsumexp(sim.masked_fill(~denominator, neg_inf), dim=1)
    return (log_den - log_num).mean()


@pytest.mark.parametrize("with_positives", [True, False])
@pytest.mark.parametrize("chunk_size", [1, 7, 16, 48, 10_000])  # K·N = 48: 7 does not divide it, 16 does
def test_chunked_contrastive_matches_full_matrix(with_positives: bool, chunk_size: int) -> None:
    g = torch.Generator().manual_seed(chunk_size)
    tokens = [torch.randn(2, 8, 5, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    ref = _full_matrix_contrastive(tokens, 0.1, with_positives)
    ref_grads = torch.autograd.grad(ref, tokens)
    got = contrastive_loss(tokens, 0.1, with_positives, chunk_size=chunk_size)
    grads = torch.autograd.grad(got, tokens)
    assert abs(got.item() - ref.item()) < 1e-6
    for a, b in zip(grads, ref_grads, strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-6)
    with torch.no_grad():  # evaluation: no recomputation, same value
        assert abs(contrastive_loss(tokens, 0.1, with_positives, chunk_size=chunk_size).item() - ref.item()) < 1e-6


def test_chunked_contrastive_float32() -> None:
    torch.manual_seed(0)
    tokens = [torch.randn(4, 9, 16, requires_grad=True) for _ in range(2)]
    ref, got = _full_matrix_contrastive(tokens, 0.1, True), contrastive_loss(tokens, chunk_size=10)
    assert abs(got.item() - ref.item()) < 1e-5
    for a, b in zip(torch.autograd.grad(got, tokens), torch.autograd.grad(ref, tokens), strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="chunk_size"):
        contrastive_loss(tokens, chunk_size=0)


def test_jepa_loss_reads_only_dropped_patches() -> None:
    pred, target = torch.zeros(1, 3, 2), torch.tensor([[[1.0, 1.0], [2.0, 0.0], [100.0, 100.0]]])
    dropped = torch.tensor([[True, True, False]])
    assert jepa_loss(pred, target, dropped, "l2").item() == pytest.approx((1.0 + 2.0) / 2)  # mean of (1, 2)
    # smooth-L1: |x| - 0.5 beyond 1: patch0 (0.5+0.5)/2 = 0.5, patch1 (1.5+0)/2 = 0.75
    assert jepa_loss(pred, target, dropped, "smooth_l1").item() == pytest.approx((0.5 + 0.75) / 2)


def test_ema_update_matches_formula() -> None:
    torch.manual_seed(0)
    student, teacher = nn.Linear(3, 2), nn.Linear(3, 2)
    before = [p.clone() for p in teacher.parameters()]
    ema_update(teacher, student, 0.9)
    for t, b, s in zip(teacher.parameters(), before, student.parameters(), strict=True):
        assert torch.allclose(t, 0.9 * b + 0.1 * s)


def test_schedules() -> None:
    assert ema_momentum(0, 100, 0.996, 1.0) == 0.996
    assert ema_momentum(50, 100, 0.996, 1.0) == pytest.approx(0.998)
    assert ema_momentum(200, 100, 0.996, 1.0) == 1.0
    assert cosine_lr(0, 100, 1.0, 0.0, 10) == pytest.approx(0.1)
    assert cosine_lr(10, 100, 1.0, 0.0, 10) == pytest.approx(1.0)
    assert cosine_lr(100, 100, 1.0, 0.1, 10) == pytest.approx(0.1)


def test_collapse_monitor() -> None:
    collapsed = embedding_stats(torch.ones(50, 16) + 1e-9 * torch.randn(50, 16))
    spread = embedding_stats(torch.randn(500, 16))
    assert collapsed["std"] < 1e-6
    assert spread["rank"] > 12 and spread["std"] == pytest.approx(1.0, abs=0.15)
