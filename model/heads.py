"""Task heads on top of the encoder (paper §3.3), and their file format.

- ``classification``: tile embedding ``[B, D]`` -> LayerNorm -> Linear -> ``[B, K]`` logits.
- ``segmentation``: dense features ``[B, h, w, 2D]`` (patch ‖ sub-patch) -> LayerNorm -> Linear to
  ``K·u²`` per sub-patch -> unfolded to ``[B, K, h·u, w·u]`` logits (``u`` = pixels per sub-patch
  side in the label raster; 1 = one label per sub-patch).
- ``task="change"``: a two-class segmentation head (0 = no change, 1 = change) fitted on time series
  for change detection; it is served exactly as any segmentation head, the field only records the task.

A head file is one ``.safetensors`` whose metadata holds ``HeadConfig`` as JSON: the class names and
colours, the input modality configuration and patch size it was fitted for, and the sha256 of the
encoder checkpoint it expects. ``training/`` writes these files; ``service/`` serves them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

HEAD_FORMAT = "anysat-head/1"
KINDS = ("classification", "segmentation")
TASKS = (None, "change")  # refinements of a kind; None = the kind itself


@dataclass(frozen=True)
class HeadConfig:
    kind: str
    embed_dim: int  # encoder D
    class_names: tuple[str, ...]
    patch_size: int
    modalities: tuple[str, ...]  # the sensors the head was fitted on, in order
    output_modality: str | None = None  # segmentation: the dense modality
    upsample: int = 1  # segmentation: label pixels per sub-patch side
    multi_label: bool = False  # classification: sigmoid per class instead of softmax
    colours: tuple[str, ...] = ()  # "#rrggbb" per class, for rendering
    encoder_sha256: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # training metrics, data, command
    task: str | None = None  # "change": binary change detection; optional so older head files still load

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if not self.class_names:
            raise ValueError("class_names must not be empty")
        if self.kind == "segmentation" and self.output_modality is None:
            raise ValueError("a segmentation head needs output_modality")
        if self.colours and len(self.colours) != len(self.class_names):
            raise ValueError(f"{len(self.colours)} colours for {len(self.class_names)} classes")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.task == "change" and (self.kind != "segmentation" or self.num_classes != 2 or self.multi_label):
            raise ValueError(f"a change head is a single-label segmentation head with 2 classes (no change, change), "
                             f"got kind {self.kind!r} with {self.num_classes} classes")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> HeadConfig:
        d = json.loads(text)
        for key in ("class_names", "modalities", "colours"):
            d[key] = tuple(d.get(key, ()))
        return cls(**d)


class Head(nn.Module):
    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        self.config = config
        k, u = config.num_classes, config.upsample
        in_dim = config.embed_dim if config.kind == "classification" else 2 * config.embed_dim
        self.norm = nn.LayerNorm(in_dim)
        self.linear = nn.Linear(in_dim, k if config.kind == "classification" else k * u * u)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` -> ``[B, K]``, or ``[B, h, w, 2D]`` -> ``[B, K, h·u, w·u]`` (logits)."""
        logits = self.linear(self.norm(features))
        if self.config.kind == "classification":
            return logits
        b, h, w, _ = logits.shape
        k, u = self.config.num_classes, self.config.upsample
        logits = logits.reshape(b, h, w, k, u, u).permute(0, 3, 1, 4, 2, 5)  # (B, K, h, u, w, u)
        return logits.reshape(b, k, h * u, w * u)


def save_head(head: Head, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()}
    save_file(tensors, str(path), metadata={"format": HEAD_FORMAT, "config": head.config.to_json()})
    return path


def load_head(path: str | Path) -> Head:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != HEAD_FORMAT:
            raise ValueError(f"{path}: not an anysat head (format {meta.get('format')!r}, expected {HEAD_FORMAT!r})")
        head = Head(HeadConfig.from_json(meta["config"]))
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a Mapping
    head.load_state_dict(state, strict=True)
    return head.eval()
