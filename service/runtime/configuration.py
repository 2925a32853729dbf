"""A *modality configuration*: what fixes one exported graph, and the batch key of the queue.

Requests with equal configurations share batches (date counts may differ: they are padded and
masked); different configurations never do. The key is canonical JSON, so it is stable across
processes and readable in Redis.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from model.inputs import OUTPUTS
from model.sensors import SENSORS


@dataclass(frozen=True)
class ModalityConfig:
    modalities: tuple[tuple[str, int], ...]  # (sensor, side in pixels), in the caller's order
    patch_size: int
    output: str = "tile"
    output_modality: str | None = None  # dense only; None = the first modality
    head: str | None = None  # a head name (masks); None = embeddings

    def __post_init__(self) -> None:
        if not self.modalities:
            raise ValueError("modalities: at least one sensor is needed")
        for name, side in self.modalities:
            if name not in SENSORS:
                raise ValueError(f"modalities: unknown sensor {name!r}")
            if side < 1:
                raise ValueError(f"modalities: {name} side must be >= 1 pixel, got {side}")
        if self.output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {self.output!r}")
        if self.output == "dense" and self.output_modality is None:
            first = next(n for n, _ in self.modalities if not SENSORS[n].context)
            object.__setattr__(self, "output_modality", first)
        if self.output != "dense":
            object.__setattr__(self, "output_modality", None)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.modalities)

    def to_dict(self) -> dict[str, Any]:
        return {"modalities": [list(m) for m in self.modalities], "patch_size": self.patch_size,
                "output": self.output, "output_modality": self.output_modality, "head": self.head}

    def key(self) -> str:
        """The batch key: canonical JSON."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_key(cls, key: str) -> ModalityConfig:
        d = json.loads(key)
        return cls(tuple((str(n), int(s)) for n, s in d["modalities"]), int(d["patch_size"]), d["output"],
                   d.get("output_modality"), d.get("head"))

    def digest(self) -> str:
        return hashlib.sha256(self.key().encode()).hexdigest()[:16]
