"""Typed, validated run configuration (pydantic), saved as JSON beside every run and in every checkpoint.

A config is read from a JSON file (``--config run.json``) and then overridden by a few CLI flags;
unknown keys are errors, never silently ignored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from model.config import list_models
from model.sensors import SENSORS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EncoderSpec(_Strict):
    """Which encoder to build: a registered size plus overrides, or an existing checkpoint."""

    name: str = "tiny"
    overrides: dict[str, Any] = Field(default_factory=dict)  # e.g. {"embed_dim": 128, "depth": 2}
    checkpoint: str | None = None  # start from these weights (ours .safetensors or official .pth)

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v.removeprefix("anysat_") not in list_models():
            raise ValueError(f"unknown model {v!r}; registered: {list_models()}")
        return v


class DatasetSpec(_Strict):
    """One pretraining dataset (paper §3.2 "Training with Multiple Datasets")."""

    root: str  # an anysat tile dataset directory (index.json)
    weight: float = 1.0  # probability of being drawn at a step ∝ weight
    patch_sizes: tuple[int, ...]  # metres; one is drawn uniformly per step
    batch_size: int = 8
    split: str | None = "train"
    sensors: tuple[str, ...] | None = None  # default: the dataset's sensors
    stats: str | None = None  # stats.json; default: <root>/stats.json if present, else the sensor table
    missing_bands: Literal["error", "fill"] = "error"

    @field_validator("weight")
    @classmethod
    def _positive_weight(cls, v: float) -> float:
        if v <= 0:
            raise ValueError(f"weight must be positive, got {v}")
        return v

    @field_validator("patch_sizes")
    @classmethod
    def _patch_sizes(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(p <= 0 or p % 10 for p in v):
            raise ValueError(f"patch_sizes must be non-empty positive multiples of 10 m, got {v}")
        return v

    @field_validator("batch_size")
    @classmethod
    def _batch(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"batch_size must be >= 1, got {v}")
        return v

    @field_validator("sensors")
    @classmethod
    def _sensors(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        unknown = [s for s in v or () if s not in SENSORS]
        if unknown:
            raise ValueError(f"unknown sensors {unknown}")
        return v


class MaskSpec(_Strict):
    """Student masking (paper §3.2): JEPA blocks, modality tokens, dates."""

    n_targets: int = 4  # target rectangles per tile (I-JEPA)
    target_scale: tuple[float, float] = (0.15, 0.2)  # area fraction of the grid per rectangle (I-JEPA)
    aspect_ratio: tuple[float, float] = (0.75, 1.5)
    min_context: float = 0.25  # never drop more than 1 - this fraction of the patches
    modality_mask_ratio: float = 0.5  # share of the (patch, modality) tokens replaced by f^mask
    date_keep_ratio: float = 0.5  # share of each series' real dates the student sees

    @model_validator(mode="after")
    def _ranges(self) -> MaskSpec:
        lo, hi = self.target_scale
        if not 0 < lo <= hi < 1:
            raise ValueError(f"target_scale must satisfy 0 < lo <= hi < 1, got {self.target_scale}")
        if not 0 < self.aspect_ratio[0] <= self.aspect_ratio[1]:
            raise ValueError(f"aspect_ratio must be 0 < lo <= hi, got {self.aspect_ratio}")
        for name in ("min_context", "date_keep_ratio"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if not 0 <= self.modality_mask_ratio < 1:
            raise ValueError(f"modality_mask_ratio must be in [0, 1), got {self.modality_mask_ratio}")
        if self.n_targets < 1:
            raise ValueError(f"n_targets must be >= 1, got {self.n_targets}")
        return self


class PretrainConfig(_Strict):
    """``anysat train pretrain``: JEPA + contrastive self-supervision over several datasets."""

    encoder: EncoderSpec = EncoderSpec()
    datasets: tuple[DatasetSpec, ...]
    masks: MaskSpec = MaskSpec()
    predictor_depth: int = 3  # paper §3.2: 3 self-attention blocks
    predictor_dim: int | None = None  # default: the encoder's width
    jepa_loss: Literal["l2", "smooth_l1"] = "l2"  # paper eq. 5 is L2; the official code uses smooth-L1
    jepa_weight: float = 1.0
    contrastive_weight: float = 1.0
    temperature: float = 0.1  # paper eq. 2
    contrastive_positives_in_denominator: bool = True  # see training.jepa.losses.contrastive_loss
    target_norm: bool = True  # LayerNorm (no affine) on the teacher's patch embeddings, as I-JEPA
    steps: int = 1000
    lr: float = 5e-5  # paper appendix C
    min_lr: float = 1e-6
    warmup_steps: int = 100
    weight_decay: float = 0.05
    ema: tuple[float, float] = (0.996, 1.0)  # teacher momentum, linear over the run
    grad_clip: float | None = 1.0
    seed: int = 0
    out_dir: str = "runs/pretrain"
    device: str = "auto"  # "auto": cuda if available, else cpu
    num_workers: int = 0
    log_every: int = 10
    checkpoint_every: int = 200

    @model_validator(mode="after")
    def _check(self) -> PretrainConfig:
        if not self.datasets:
            raise ValueError("datasets: at least one dataset is needed")
        if self.steps < 1 or self.warmup_steps < 0 or self.predictor_depth < 1:
            raise ValueError("steps >= 1, warmup_steps >= 0, predictor_depth >= 1 required")
        if not 0 <= self.ema[0] <= self.ema[1] <= 1:
            raise ValueError(f"ema must satisfy 0 <= start <= end <= 1, got {self.ema}")
        if self.temperature <= 0 or self.lr <= 0:
            raise ValueError("temperature and lr must be positive")
        if self.log_every < 1 or self.checkpoint_every < 1:
            raise ValueError("log_every and checkpoint_every must be >= 1")
        return self


class DownstreamConfig(_Strict):
    """``anysat train finetune`` / ``anysat train probe`` on a labelled tile dataset."""

    encoder: EncoderSpec
    dataset: str  # tile dataset with labels (class, multilabel or mask)
    # auto: from the label kind; change: a 2-class mask (1 = change) predicted from a time series
    task: Literal["auto", "classification", "segmentation", "change"] = "auto"
    change_pos_weight: float | None = None  # change: loss weight of class 1; None = from training frequencies
    freeze_encoder: bool = True  # True = linear probing, False = full fine-tuning
    patch_size: int = 20
    output_modality: str | None = None  # segmentation: dense modality (default: the first sensor)
    sensors: tuple[str, ...] | None = None
    stats: str | None = None
    missing_bands: Literal["error", "fill"] = "error"
    train_split: str = "train"
    eval_split: str = "val"
    epochs: int = 20
    batch_size: int = 16
    lr: float = 1e-3
    encoder_lr: float = 5e-5  # fine-tuning only (paper appendix C)
    weight_decay: float = 0.0
    seed: int = 0
    out_dir: str = "runs/downstream"
    device: str = "auto"
    head_path: str | None = None  # default: <out_dir>/head.safetensors
    class_colours: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> DownstreamConfig:
        if self.patch_size <= 0 or self.patch_size % 10:
            raise ValueError(f"patch_size must be a positive multiple of 10, got {self.patch_size}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("epochs >= 1, batch_size >= 1, lr > 0 required")
        if self.change_pos_weight is not None:
            if self.task != "change":
                raise ValueError(f"change_pos_weight applies to task 'change' only, the task is {self.task!r}")
            if self.change_pos_weight <= 0:
                raise ValueError(f"change_pos_weight must be positive, got {self.change_pos_weight}")
        return self


def load_config(cls: type[_Strict], path: str | Path | None, **overrides: Any) -> Any:
    """Read ``path`` (JSON) if given, apply non-None ``overrides`` (top-level keys), validate."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: cannot read config ({e})") from None
    data.update({k: v for k, v in overrides.items() if v is not None})
    return cls.model_validate(data)


def save_config(config: BaseModel, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config.model_dump_json(indent=1) + "\n")
    return path
