"""Student (encoder + ``f^mask`` + predictor) and teacher (EMA copy of the encoder) — paper §3.2."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.encoder import AnySat
from model.inputs import Plan
from training.jepa.masks import StudentMasks
from training.jepa.student import Predictor, student_fusion


@dataclass
class StudentOutput:
    pred: torch.Tensor  # (B, P, D) predicted teacher embeddings for every patch
    patch_tokens: list[torch.Tensor]  # K x (B, P, D) per-modality patch embeddings f^m_{p,S} (eq. 1)


class JEPAStudent(nn.Module):
    """What the optimizer trains. ``forward`` is the whole student pass, so DDP wraps this module."""

    def __init__(self, encoder: AnySat, predictor_depth: int = 3, predictor_dim: int | None = None) -> None:
        super().__init__()
        if encoder.config.flash_layout_bug:
            raise ValueError("pretraining uses standard attention; build the encoder with flash_layout_bug=False")
        d = encoder.embed_dim
        self.encoder = encoder
        self.mask_token = nn.Parameter(torch.zeros(d))  # f^mask
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.predictor = Predictor(d, predictor_dim or d, predictor_depth, encoder.config.num_heads,
                                   encoder.config.mlp_ratio)

    def forward(self, data: Mapping[str, torch.Tensor], plan: Plan, masks: StudentMasks) -> StudentOutput:
        patch_tokens, _, context = self.encoder.forward_modalities(data, plan)  # eq. (1), dates thinned
        context_out = student_fusion(self.encoder, patch_tokens, context, plan, masks, self.mask_token)  # eq. (3)
        pred = self.predictor(context_out, masks, plan.grid, plan.scale)  # eq. (4)
        return StudentOutput(pred, patch_tokens)

    def optimizer_groups(self, weight_decay: float) -> list[dict[str, object]]:
        """nanoGPT's rule: weight decay on every ≥2-D tensor (matrices, tables), none on biases/norms/tokens."""
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_teacher(encoder: AnySat) -> AnySat:
    """A frozen copy of the student's encoder; only ``ema_update`` changes it."""
    return copy.deepcopy(encoder).requires_grad_(False).eval()


@torch.no_grad()
def teacher_targets(teacher: AnySat, data: Mapping[str, torch.Tensor], plan: Plan) -> torch.Tensor:
    """``f*_{p,T}`` for every patch, ``[B, P, D]``: full inputs, no masking, class slot dropped."""
    patch_tokens, _, context = teacher.forward_modalities(data, plan)
    return teacher.forward_fusion(patch_tokens, context, plan)[:, 1:]


def normalise_targets(x: torch.Tensor) -> torch.Tensor:
    """LayerNorm without affine over the embedding (I-JEPA and the official code)."""
    return F.layer_norm(x, x.shape[-1:])
