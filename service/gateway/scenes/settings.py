"""``anysat predict``'s one settings class: the runtime's (checkpoint, runtime, export cache) and the job limits."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from service.gateway.scenes.job import SceneLimits
from service.gateway.settings import DEMO_CHECKPOINT
from service.runtime.settings import RuntimeSettings

_LIMITS = SceneLimits()


class PredictSettings(RuntimeSettings):
    """``anysat predict`` (in-process scene inference). Each field is read from ``ANYSAT_<FIELD>`` or its flag."""

    model_config = SettingsConfigDict(env_prefix="ANYSAT_", frozen=True, extra="forbid")

    runtime: Literal["eager", "onnx", "torchscript", "triton"] = Field(
        "eager", description="eager (PyTorch), onnx (ONNX Runtime), torchscript, or triton (a Triton server)")
    batch_size: int = Field(8, ge=1, le=1024, description="tiles per forward pass")
    max_area_km2: float = Field(_LIMITS.max_area_km2, gt=0, description="largest area one job may cover")
    max_tiles: int = Field(_LIMITS.max_tiles, ge=1, description="most tiles one job may cut")
    max_in_flight_tiles: int = Field(_LIMITS.max_in_flight_tiles, ge=2,
                                     description="tiles read and prepared ahead of the model, at most (memory)")

    def resolved_checkpoint(self) -> Path:
        return self.checkpoint if self.checkpoint is not None else DEMO_CHECKPOINT

    def resolved_heads_dir(self) -> Path | None:
        """The configured heads, else the ``heads/`` directory beside the checkpoint (as the demo has it)."""
        if self.heads_dir is not None:
            return self.heads_dir
        beside = self.resolved_checkpoint().parent / "heads"
        return beside if beside.is_dir() else None

    def limits(self) -> SceneLimits:
        return SceneLimits(self.max_area_km2, self.max_tiles, self.max_in_flight_tiles)
