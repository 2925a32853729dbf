"""What checkpoint is served, read cheaply (safetensors header, or the official file memory-mapped)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from model.checkpoint import CheckpointError, read_metadata
from model.config import list_models, model_config

# Official AnyModule keys: one projector per sensor the weights were trained with, e.g. projector_s1-asc.<...>.
_PROJECTOR = re.compile(r"projector_([a-z0-9-]+)\.")


def official_modalities(state: Mapping[str, Any]) -> list[str]:
    """The sensors an official state dict has projectors for, sorted (as ``AnySatConfig`` sorts them)."""
    return sorted({m[1] for key in state if (m := _PROJECTOR.match(key))})


@lru_cache(maxsize=4)
def describe_checkpoint(path: Path) -> dict[str, Any]:
    """``{"path", "exists", "format", "size", "embed_dim", "modalities"}``; never raises (an error goes in
    ``"error"``). ``modalities``: the sensors the checkpoint has projectors for (what the served model takes)."""
    info: dict[str, Any] = {"path": str(path), "exists": path.is_file(), "format": None, "size": None,
                            "embed_dim": None, "modalities": None}
    if not info["exists"]:
        return info
    try:
        if path.suffix == ".safetensors":
            config, _ = read_metadata(path)
            info.update(format="anysat-serve", embed_dim=config.embed_dim, modalities=list(config.modalities))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            state = state.get("state_dict", state)
            info.update(format="official", embed_dim=int(state["cls_token"].shape[-1]),
                        modalities=official_modalities(state))
        sizes = {model_config(n).embed_dim: n for n in list_models()}
        info["size"] = sizes.get(info["embed_dim"])
    except (CheckpointError, OSError, KeyError, RuntimeError, ValueError, AttributeError) as exc:
        info["error"] = f"{type(exc).__name__}: {exc}"
    return info
