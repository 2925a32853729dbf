"""Device choice and the DDP setup ``torchrun`` expects (RANK / WORLD_SIZE / LOCAL_RANK env vars)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``"auto"``: this rank's GPU if CUDA is available, else the CPU; any other value as given."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


def setup(device: str = "auto") -> DistInfo:
    """Join the process group when launched by ``torchrun`` (nccl on GPUs, gloo on CPUs); no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local, dev)


def wrap(module: nn.Module, info: DistInfo) -> nn.Module:
    """DDP around the trained module. ``find_unused_parameters``: a batch uses only its dataset's projectors."""
    if not info.enabled:
        return module
    ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def all_mean(value: float, info: DistInfo) -> float:
    """Average a logged scalar over ranks."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return float(t.item()) / info.world_size


def teardown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        # All ranks leave together: a rank that destroys its gloo group while rank 0 still writes the encoder
        # was seen to abort at exit ("terminate called without an active exception", SIGABRT) in CI.
        dist.barrier()
        dist.destroy_process_group()
