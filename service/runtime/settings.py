"""Settings of the model side of a worker process (and of ``anysat export``): which weights, which runtime,
where exports live. ``ModelWorkerSettings`` is the one class ``anysat worker`` reads: these fields plus the
engine's ``WorkerSettings``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.engine.settings import WorkerSettings

RUNTIMES = ("eager", "onnx", "torchscript", "triton")
DEFAULT_MAX_GRAPHS = 4
DEFAULT_CACHE_GB = 20.0


def default_export_dir() -> Path:
    return Path.home() / ".cache" / "anysat" / "exports"


class RuntimeSettings(BaseSettings):
    """How the model runs. Each field is read from ``ANYSAT_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="ANYSAT_", frozen=True, extra="forbid")

    checkpoint: Path | None = Field(None, description="encoder checkpoint: official AnySat .pth or our .safetensors")
    heads_dir: Path | None = Field(None, description="directory of <name>.safetensors heads (for /v1/masks)")
    runtime: Literal["eager", "onnx", "torchscript", "triton"] = Field(
        "onnx", description="eager (PyTorch), onnx (ONNX Runtime), torchscript, or triton (a Triton server)")
    export_dir: Path = Field(default_factory=default_export_dir,
                             description="the export cache shared by workers (~/.cache/anysat/exports)")
    export_cache_gb: float = Field(DEFAULT_CACHE_GB, gt=0, allow_inf_nan=False,
                                   description="export cache size limit; least recently used exports removed first")
    max_graphs: int = Field(DEFAULT_MAX_GRAPHS, ge=1,
                            description="configurations kept loaded per worker (onnx, torchscript)")
    triton_url: str | None = Field(None, description="runtime triton: the server, e.g. 127.0.0.1:8000")
    triton_repository: Path | None = Field(None, description="runtime triton: its model repository directory")


class ModelWorkerSettings(RuntimeSettings, WorkerSettings):
    """``anysat worker``: the engine's worker settings and the model's, read from ``ANYSAT_*`` and flags."""

    model_config = SettingsConfigDict(env_prefix="ANYSAT_", frozen=True, extra="forbid")
