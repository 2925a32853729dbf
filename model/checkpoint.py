"""Checkpoints: official AnySat ``.pth`` files and our own safetensors format.

Our format is one ``.safetensors`` file whose metadata holds the model config (JSON) and free
training metadata, so a checkpoint rebuilds its model with no other input. Official files are read
with ``torch.load(weights_only=True)``: no arbitrary object is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import AnySatConfig, model_config
from .encoder import AnySat

FORMAT = "anysat-serve/1"
_SIZES_BY_DIM = {256: "tiny", 512: "small", 768: "base"}


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the model it claims to be."""


def file_sha256(path: str | Path) -> str:
    """Identity of a checkpoint file: heads, export manifests and caches record it."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def official_to_ours(key: str, depth: int) -> str:
    """Rename one official ``AnyModule`` key (e.g. ``projector_s1-asc.pad_parameter``)."""
    key = key.replace("rpe_k.lookup_table_weight", "rpe_table")
    if m := re.match(r"projector_([a-z0-9-]+)\.(.*)", key):
        return f"projectors.{m[1]}.{m[2]}"
    key = key.replace("spatial_encoder.predictor_blocks.", "patch_encoder.blocks.")
    key = key.replace("spatial_encoder.predictor_norm.", "patch_encoder.norm.")
    key = key.replace("spatial_encoder.cls_token", "patch_encoder.cls_token")
    if m := re.match(r"blocks\.(\d+)\.(.*)", key):
        i = int(m[1])
        return f"combiner.{m[2]}" if i == depth else f"joint_blocks.{i}.{m[2]}"
    return key


def load_official_state_dict(model: AnySat, state: dict[str, torch.Tensor]) -> None:
    """Load an official ``AnyModule`` state dict (``checkpoint["state_dict"]``) strictly.

    The only keys allowed to differ: projectors of modalities this model was built without
    (a subset model, e.g. TreeSatAI's aerial + s1-asc + s2) are ignored. Anything else missing or
    unexpected raises ``CheckpointError`` naming the keys.
    """
    depth = model.config.depth
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        ours = official_to_ours(key, depth)
        if (m := re.match(r"projectors\.([a-z0-9-]+)\.", ours)) and m[1] not in model.projectors:
            continue
        renamed[ours] = value
    _load_strict(model, renamed, source="official checkpoint")


def _load_strict(model: AnySat, state: dict[str, torch.Tensor], source: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:8]}{' …' if len(missing) > 8 else ''} ({len(missing)})")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:8]}{' …' if len(unexpected) > 8 else ''} "
                         f"({len(unexpected)})")
        if wrong:
            parts.append("shape mismatch " + ", ".join(
                f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                for k in wrong[:8]))
        raise CheckpointError(f"{source} does not fit {_describe(model.config)}: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def _describe(config: AnySatConfig) -> str:
    return f"AnySat(embed_dim={config.embed_dim}, depth={config.depth}, modalities={list(config.modalities)})"


def save_checkpoint(model: AnySat, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write weights + config (+ JSON-able ``metadata``) to one ``.safetensors`` file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata={
        "format": FORMAT,
        "config": json.dumps(model.config.to_dict()),
        "metadata": json.dumps(metadata or {}),
    })
    return path


def read_metadata(path: str | Path) -> tuple[AnySatConfig, dict[str, Any]]:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an anysat-serve checkpoint (metadata format "
                              f"{meta.get('format')!r}, expected {FORMAT!r})")
    return AnySatConfig.from_dict(json.loads(meta["config"])), json.loads(meta.get("metadata", "{}"))


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> tuple[AnySat, dict[str, Any]]:
    """Rebuild a model from one of our ``.safetensors`` checkpoints; returns (model, metadata)."""
    config, meta = read_metadata(path)
    model = AnySat(config)
    tensors: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt", device=map_location) as f:
        for key in f.keys():  # noqa: SIM118 - safe_open is not a Mapping
            tensors[key] = f.get_tensor(key)
    _load_strict(model, tensors, source=str(path))
    return model.eval(), meta


def _read_official(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses anything but tensors and plain containers
        raise CheckpointError(f"{path}: cannot read as a tensor-only checkpoint: {e}") from e
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected {{'state_dict': {{name: tensor}}}} (official AnySat format)")
    return state


def create_model(name: str | None = None, checkpoint: str | Path | None = None,
                 **overrides: Any) -> AnySat:
    """The one constructor: ``create_model("base")``, ``create_model("base", "AnySat.pth")``,
    or ``create_model(checkpoint="demo.safetensors")`` (the file carries its config).

    Official ``.pth``/``.pt`` checkpoints: the size is inferred from the weights when ``name`` is
    None. ``overrides`` change config fields (e.g. ``modalities=("aerial", "s2", "s1-asc")``).
    """
    if checkpoint is None:
        if name is None:
            raise ValueError("create_model needs a model name or a checkpoint")
        return AnySat(model_config(name, **overrides)).eval()
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        model, _ = load_checkpoint(path)
        if name is not None and model_config(name).embed_dim != model.config.embed_dim:
            raise CheckpointError(f"{path} holds {_describe(model.config)}, not {name!r}")
        if overrides:
            raise ValueError("overrides are not applied to our checkpoints: their config is stored inside")
        return model
    state = _read_official(path)
    if name is None:
        dim = state["cls_token"].shape[-1] if "cls_token" in state else None
        if dim not in _SIZES_BY_DIM:
            raise CheckpointError(f"{path}: cannot infer the model size (cls_token dim {dim})")
        name = _SIZES_BY_DIM[dim]
    model = AnySat(model_config(name, **overrides))
    load_official_state_dict(model, state)
    return model.eval()
