"""Schedules as small pure functions of the step (nothing to checkpoint but the step itself)."""

from __future__ import annotations

import math

import torch
from torch import nn


def cosine_lr(step: int, total: int, base: float, final: float, warmup: int) -> float:
    """Linear warmup from 0 to ``base`` over ``warmup`` steps, then cosine down to ``final`` at ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return final + 0.5 * (base - final) * (1.0 + math.cos(math.pi * progress))


def ema_momentum(step: int, total: int, start: float, end: float) -> float:
    """Teacher momentum rising linearly from ``start`` (step 0) to ``end`` (step ``total``), then flat."""
    return start + (end - start) * min(1.0, step / max(1, total))


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``θ_t ← m·θ_t + (1 − m)·θ_s`` for every parameter (buffers are copied)."""
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.mul_(momentum).add_(s.detach(), alpha=1.0 - momentum)
    for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
        t.copy_(s)
