"""Settings of the model side of a worker process (and of ``anysat export``): which weights, which runtime,
where exports live. ``ModelWorkerSettings`` is the one class ``anysat worker`` reads: these fields plus the
engine's ``WorkerSettings``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.engine.settings import WorkerSettings
from service.runtime.device import CudaOptions, Device

RUNTIMES = ("eager", "onnx", "torchscript", "triton")
DEFAULT_MAX_GRAPHS = 4
# Padded input a batch may carry over its real input before it is split (ModelRunner.run): on a CPU a forward costs
# about as much per tile at batch 1 as at 8 (benchmarks.peers prints both), so padding is pure cost there.
DEFAULT_MAX_PADDING = 1.25
DEFAULT_CACHE_GB = 20.0
PRECISIONS = ("fp32", "fp16")


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
    max_padding: float = Field(
        DEFAULT_MAX_PADDING, ge=1.0, allow_inf_nan=True,
        description="a batch is split where padding its time series to the longest would make its input more than "
                    "this times the real one (inf: never split; on a GPU batching pays more, raise it)")
    triton_url: str | None = Field(None, description="runtime triton: the server, e.g. 127.0.0.1:8000")
    triton_repository: Path | None = Field(None, description="runtime triton: its model repository directory")
    device: str = Field("cpu", description="cpu, cuda or cuda:N; the worker refuses to start on a device it "
                        "cannot use (docs/gpu.md)")
    precision: Literal["fp32", "fp16"] = Field(
        "fp32", description="runtime onnx: the graph workers load; fp16 is exported beside fp32 and refused "
        "below cosine 0.999 to it")
    io_binding: bool | None = Field(None, description="runtime onnx: bind inputs/outputs to the device (unset: "
                                    "on for cuda, off for cpu)")
    cuda_arena_extend_strategy: Literal["kNextPowerOfTwo", "kSameAsRequested"] = Field(
        "kNextPowerOfTwo", description="CUDA provider: how its memory arena grows")
    cudnn_conv_algo_search: Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"] = Field(
        "HEURISTIC", description="CUDA provider: cuDNN convolution search (EXHAUSTIVE benchmarks each new "
        "batch shape on its first run)")
    cuda_mem_limit_gb: float | None = Field(None, gt=0, allow_inf_nan=False,
                                            description="CUDA provider: arena limit per worker (unset: the GPU)")
    tensorrt: bool = Field(False, description="runtime onnx on cuda: TensorRT provider first when ONNX Runtime "
                           "has it")

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        return str(Device.parse(value))

    @model_validator(mode="after")
    def _precision_needs_onnx(self) -> RuntimeSettings:
        if self.precision != "fp32" and self.runtime != "onnx":
            raise ValueError(f"precision {self.precision} is a graph of runtime onnx; runtime {self.runtime} "
                             "runs fp32 (set ANYSAT_PRECISION=fp32 or ANYSAT_RUNTIME=onnx)")
        return self

    @property
    def target(self) -> Device:
        return Device.parse(self.device)

    def cuda_options(self) -> CudaOptions:
        limit = None if self.cuda_mem_limit_gb is None else int(self.cuda_mem_limit_gb * 2**30)
        return CudaOptions(self.cuda_arena_extend_strategy, self.cudnn_conv_algo_search, limit, self.tensorrt)


class ModelWorkerSettings(RuntimeSettings, WorkerSettings):
    """``anysat worker``: the engine's worker settings and the model's, read from ``ANYSAT_*`` and flags."""

    model_config = SettingsConfigDict(env_prefix="ANYSAT_", frozen=True, extra="forbid")
