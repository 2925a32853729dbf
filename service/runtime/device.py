"""Where a worker runs its model: ``ANYSAT_DEVICE`` (``cpu``, ``cuda``, ``cuda:N``), the ONNX Runtime execution
providers that follow from it, and the check at worker start that refuses a device the machine cannot give.

ONNX Runtime is imported here, lazily (``onnxruntime()``), and nowhere else in the serving stack: it comes from an
extra (``.[cpu]`` or ``.[gpu]``, never both, see docs/gpu.md), so a process that never runs a graph — the gateway,
the eager runtime — must not need it, and one that does must say which extra is missing rather than fail with a
bare ``ModuleNotFoundError``.

One worker process holds one ONNX Runtime session per loaded graph on its one device; several workers may share a
GPU (``anysat serve --workers N`` with ``ANYSAT_DEVICE=cuda``, or compose replicas), each with its own sessions and
CUDA memory arena — ``ANYSAT_CUDA_MEM_LIMIT_GB`` bounds each arena so N of them fit.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

_DEVICE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")
CUDA_PROVIDER = "CUDAExecutionProvider"
TENSORRT_PROVIDER = "TensorrtExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
INSTALL_HINT = ('install exactly one ONNX Runtime: pip install -e ".[serve,cpu]" here, or ".[serve,gpu]" on an '
                "NVIDIA machine (never both: see docs/gpu.md)")


class DeviceUnavailable(RuntimeError):
    """The configured device (or the ONNX Runtime it needs) is not usable on this machine."""


def onnxruntime() -> ModuleType:
    """The ``onnxruntime`` module, or ``DeviceUnavailable`` saying which extra installs it."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise DeviceUnavailable(f"ONNX Runtime is not installed ({exc}); {INSTALL_HINT}") from exc
    return ort


@dataclass(frozen=True)
class Device:
    """``cpu`` or ``cuda`` with a GPU index (``cuda`` alone is GPU 0)."""

    kind: str
    index: int = 0

    @classmethod
    def parse(cls, text: str) -> Device:
        m = _DEVICE.match(text.strip().lower())
        if m is None:
            raise ValueError(f"device must be cpu, cuda or cuda:N (N a GPU index), got {text!r}")
        if m.group(1) == "cpu" and m.group(2) is not None:
            raise ValueError(f"device cpu takes no index, got {text!r}")
        return cls(m.group(1), int(m.group(2) or 0))

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"

    @property
    def torch(self) -> str:
        """The name torch gives it (``cpu``, ``cuda:0``)."""
        return f"cuda:{self.index}" if self.is_cuda else "cpu"

    def __str__(self) -> str:
        return self.torch


@dataclass(frozen=True)
class CudaOptions:
    """The CUDA execution provider's options a worker sets (ONNX Runtime's names in ``provider_options``)."""

    arena_extend_strategy: str = "kNextPowerOfTwo"
    cudnn_conv_algo_search: str = "HEURISTIC"
    gpu_mem_limit_bytes: int | None = None
    tensorrt: bool = False

    def provider_options(self, device: Device) -> dict[str, str]:
        opts = {"device_id": str(device.index), "arena_extend_strategy": self.arena_extend_strategy,
                "cudnn_conv_algo_search": self.cudnn_conv_algo_search}
        if self.gpu_mem_limit_bytes is not None:
            opts["gpu_mem_limit"] = str(self.gpu_mem_limit_bytes)
        return opts


def device_providers(device: Device, options: CudaOptions | None = None,
              available: list[str] | None = None) -> list[tuple[str, dict[str, str]]]:
    """Execution providers with their options, in ONNX Runtime's order of preference, for ``device``.

    CPU is always last: ONNX Runtime places a node no GPU provider takes (shape arithmetic, mostly) there. On
    ``cuda`` the CUDA provider must be ``available`` (``check_device`` refuses otherwise); TensorRT goes first
    when asked for and present, and is skipped with a warning when asked for and absent."""
    options = options or CudaOptions()
    if not device.is_cuda:
        return [(CPU_PROVIDER, {})]
    available = onnxruntime().get_available_providers() if available is None else available
    if CUDA_PROVIDER not in available:
        raise DeviceUnavailable(_no_cuda_provider(device, available))
    chosen: list[tuple[str, dict[str, str]]] = []
    if options.tensorrt:
        if TENSORRT_PROVIDER in available:
            chosen.append((TENSORRT_PROVIDER, {"device_id": str(device.index)}))
        else:
            log.warning("ANYSAT_TENSORRT is set but this ONNX Runtime has no %s (providers: %s); using CUDA",
                        TENSORRT_PROVIDER, ", ".join(available))
    chosen.append((CUDA_PROVIDER, options.provider_options(device)))
    chosen.append((CPU_PROVIDER, {}))
    return chosen


def _no_cuda_provider(device: Device, available: list[str]) -> str:
    return (f"ANYSAT_DEVICE={device}: this ONNX Runtime has no {CUDA_PROVIDER} (available: {', '.join(available)}); "
            'install ".[serve,gpu]" on a machine with an NVIDIA GPU and driver, without the CPU onnxruntime '
            "beside it, or set ANYSAT_DEVICE=cpu")


def check_device(device: Device, runtime: str, options: CudaOptions | None = None) -> dict[str, Any]:
    """At worker start: log what this machine really offers, and raise ``DeviceUnavailable`` (a message naming
    the setting and the fix) when ``device`` is not usable by ``runtime`` — instead of running on the CPU while
    the operator believes it is on a GPU. Returns what was found (for logs and the benchmark)."""
    found: dict[str, Any] = {"device": str(device), "runtime": runtime}
    if runtime in ("onnx", "triton") or not device.is_cuda:
        try:
            ort = onnxruntime()
        except DeviceUnavailable:
            if runtime == "onnx":
                raise
        else:
            found["onnxruntime"] = ort.__version__
            found["providers"] = ort.get_available_providers()
    if runtime in ("eager", "torchscript"):
        import torch

        found["torch"] = torch.__version__
        found["torch_cuda"] = torch.cuda.is_available()
        if device.is_cuda:
            if not torch.cuda.is_available():
                raise DeviceUnavailable(
                    f"ANYSAT_DEVICE={device}: torch {torch.__version__} sees no CUDA device (runtime {runtime}); "
                    "install a CUDA build of torch on a machine with an NVIDIA GPU, or set ANYSAT_DEVICE=cpu")
            if device.index >= torch.cuda.device_count():
                raise DeviceUnavailable(f"ANYSAT_DEVICE={device}: torch sees {torch.cuda.device_count()} GPU(s)")
            found["gpu"] = torch.cuda.get_device_name(device.index)
    elif runtime == "onnx" and device.is_cuda:
        found["execution_providers"] = [n for n, _ in device_providers(device, options, found["providers"])]
    log.info("device %s, runtime %s: %s", device, runtime,
             ", ".join(f"{k}={v}" for k, v in found.items() if k not in ("device", "runtime")))
    return found


def bound_run(session: Any, names: list[str], device: Device) -> Callable[[Mapping[str, np.ndarray]], np.ndarray]:
    """``feed -> first output`` through ONNX Runtime's IO binding: each input copied to ``device`` once, as one
    ``OrtValue``, and the output left where the graph wrote it until it is read back once.

    A plain ``session.run`` on the CUDA provider stages every input through pinned host memory and synchronises
    per tensor; with the binding the copies are issued up front and the output is fetched in one copy. On the CPU
    provider the binding wraps the numpy buffers without a copy, so the same code path is testable here and gives
    the plain run's results (tests/test_gpu_device.py)."""
    ort = onnxruntime()
    where = "cuda" if device.is_cuda else "cpu"
    output = session.get_outputs()[0].name

    def run(feed: Mapping[str, np.ndarray]) -> np.ndarray:
        binding = session.io_binding()
        for name in names:
            value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(feed[name]), where, device.index)
            binding.bind_ortvalue_input(name, value)
        binding.bind_output(output, where, device.index)
        session.run_with_iobinding(binding)
        return np.asarray(binding.copy_outputs_to_cpu()[0])

    return run
