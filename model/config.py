"""Typed model configuration and the registry of named sizes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

from .sensors import MODALITIES, SENSORS


@dataclass(frozen=True)
class AnySatConfig:
    embed_dim: int = 768
    depth: int = 6  # blocks in the patch encoder *and* in the joint transformer
    num_heads: int = 12
    mlp_ratio: float = 4.0
    modalities: tuple[str, ...] = MODALITIES  # projectors to build (all 11 for official weights)
    # Reproduce the official training-time flash-attention layout bug in the joint blocks
    # (reference doc §4.1). Off: standard attention, as the official release/demo runs.
    flash_layout_bug: bool = False

    def __post_init__(self) -> None:
        unknown = [m for m in self.modalities if m not in SENSORS]
        if unknown:
            raise ValueError(f"unknown modalities {unknown}; expected a subset of {list(MODALITIES)}")
        if self.embed_dim % self.num_heads or self.embed_dim % 16:
            raise ValueError(f"embed_dim {self.embed_dim} must be divisible by num_heads "
                             f"({self.num_heads}) and by 16 (L-TAE heads)")
        # Sorted, like the official registration order, so state dicts line up key for key.
        object.__setattr__(self, "modalities", tuple(sorted(self.modalities)))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["modalities"] = list(self.modalities)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AnySatConfig:
        known = {f.name for f in fields(cls)}
        extra = set(d) - known
        if extra:
            raise ValueError(f"unknown config fields {sorted(extra)}")
        d = dict(d)
        if "modalities" in d:
            d["modalities"] = tuple(d["modalities"])
        return cls(**d)


_REGISTRY: dict[str, Callable[..., AnySatConfig]] = {}


def register_model(fn: Callable[..., AnySatConfig]) -> Callable[..., AnySatConfig]:
    """Register a size by its builder's name (``anysat_tiny`` is created as "tiny" or "anysat_tiny")."""
    _REGISTRY[fn.__name__.removeprefix("anysat_")] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_config(name: str, **overrides: Any) -> AnySatConfig:
    key = name.removeprefix("anysat_")
    if key not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(list_models())}")
    return _REGISTRY[key](**overrides)


@register_model
def anysat_tiny(**kw: Any) -> AnySatConfig:
    return AnySatConfig(**{"embed_dim": 256, "depth": 2, "num_heads": 4, **kw})


@register_model
def anysat_small(**kw: Any) -> AnySatConfig:
    return AnySatConfig(**{"embed_dim": 512, "depth": 4, "num_heads": 8, **kw})


@register_model
def anysat_base(**kw: Any) -> AnySatConfig:
    return AnySatConfig(**{"embed_dim": 768, "depth": 6, "num_heads": 12, **kw})
