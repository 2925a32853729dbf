"""What checkpoint is served, read cheaply (safetensors header, or the official file memory-mapped)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from model.checkpoint import CheckpointError, read_metadata
from model.config import list_models, model_config


@lru_cache(maxsize=4)
def describe_checkpoint(path: Path) -> dict[str, Any]:
    """``{"path", "exists", "format", "size", "embed_dim"}``; never raises (an error goes in ``"error"``)."""
    info: dict[str, Any] = {"path": str(path), "exists": path.is_file(), "format": None, "size": None,
                            "embed_dim": None}
    if not info["exists"]:
        return info
    try:
        if path.suffix == ".safetensors":
            config, _ = read_metadata(path)
            info.update(format="anysat-serve", embed_dim=config.embed_dim)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            state = state.get("state_dict", state)
            info.update(format="official", embed_dim=int(state["cls_token"].shape[-1]))
        sizes = {model_config(n).embed_dim: n for n in list_models()}
        info["size"] = sizes.get(info["embed_dim"])
    except (CheckpointError, OSError, KeyError, RuntimeError, ValueError, AttributeError) as exc:
        info["error"] = f"{type(exc).__name__}: {exc}"
    return info
