"""Building the encoder a run starts from."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from model import create_model
from model.encoder import AnySat
from training.config import EncoderSpec


def build_encoder(spec: EncoderSpec, sensors: Sequence[str]) -> AnySat:
    """A fresh encoder of ``spec.name`` + overrides with projectors for ``sensors`` (unless the overrides
    name their own ``modalities``), or the checkpoint's weights. The encoder is returned in train mode."""
    if spec.checkpoint is not None:
        if Path(spec.checkpoint).suffix == ".safetensors":
            model = create_model(checkpoint=spec.checkpoint)
        else:
            model = create_model(spec.name, checkpoint=spec.checkpoint, **spec.overrides)
    else:
        overrides = {"modalities": tuple(sensors), **spec.overrides}
        model = create_model(spec.name, **overrides)
    lacking = [s for s in sensors if s not in model.projectors]
    if lacking:
        raise ValueError(f"the encoder has no projector for {lacking} (it has {list(model.projectors)})")
    return model.train()

