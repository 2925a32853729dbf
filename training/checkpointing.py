"""Resumable training state: weights (student, teacher), optimizer, step, RNG and the run's config.

One ``torch.save`` file of tensors and plain containers, read back with ``weights_only=True``. The LR
and EMA schedules are pure functions of the step and the data/mask draws are pure functions of
``(seed, step, rank)``, so the step *is* the scheduler and sampler state.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

STATE_FORMAT = "anysat-train-state/1"


class ResumeError(ValueError):
    """A training state that cannot continue this run."""


def save_state(path: str | Path, *, step: int, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer,
               config: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": STATE_FORMAT,
        "step": step,
        "modules": {k: m.state_dict() for k, m in modules.items()},
        "optimizer": optimizer.state_dict(),
        "config": config,
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        "extra": extra or {},
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a half checkpoint
    return path


def load_state(path: str | Path, *, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer,
               config: dict[str, Any], may_differ: tuple[str, ...] = ()) -> dict[str, Any]:
    """Restore everything in place and return the state (``state["step"]`` = steps already done).

    Raises ``ResumeError`` if the file is not a training state or its config differs from ``config``
    in a field outside ``may_differ`` — a resume never silently starts another run."""
    path = Path(path)
    if not path.is_file():
        raise ResumeError(f"{path}: no such training state")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ResumeError(f"{path}: not an anysat training state (format {STATE_FORMAT})")
    saved = state["config"]
    differ = sorted(k for k in set(saved) | set(config) if k not in may_differ and saved.get(k) != config.get(k))
    if differ:
        raise ResumeError(f"{path}: the run was started with a different config for {differ}; "
                          f"resume with the same settings (only {list(may_differ)} may change)")
    missing = set(modules) - set(state["modules"])
    if missing:
        raise ResumeError(f"{path}: no weights for {sorted(missing)}")
    for name, module in modules.items():
        module.load_state_dict(state["modules"][name], strict=True)
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state
