"""Executors: what runs a batch of prepared tile requests through the model.

The pipeline hands an executor batches of ``TileRequest`` (a queue request's payload: batch key and tensors,
keyed by the tile id) and writes each tile id's result once, whatever the order results come back in and
however many times a tile was delivered: an executor over an at-least-once queue may return a tile twice or
return tiles of earlier batches late. ``InProcessExecutor`` runs a ``Runner`` (the runtime's ``ModelRunner``)
in this process; a queue executor enqueues the same requests for the worker fleet."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from service.engine.batching import Runner


@dataclass(frozen=True)
class TileRequest:
    tile_id: str
    batch_key: str  # ModalityConfig.key(): requests of one key run as one batch
    tensors: dict[str, np.ndarray]  # PreparedTile.tensors: what a worker's Runner.run receives


class Executor(Protocol):
    def submit(self, batch: Sequence[TileRequest]) -> Mapping[str, dict[str, np.ndarray]]:
        """Run ``batch``; tile id -> the runner's result (``{"embedding": ...}`` or ``{"logits": ...}``). Blocks
        until every tile of the batch has a result (or raises)."""
        ...

    def close(self) -> None: ...


class InProcessExecutor:
    """Runs each batch key's tiles as one ``runner.run`` call, in this process."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def submit(self, batch: Sequence[TileRequest]) -> dict[str, dict[str, np.ndarray]]:
        groups: dict[str, list[TileRequest]] = {}
        for r in batch:
            groups.setdefault(r.batch_key, []).append(r)
        out: dict[str, dict[str, np.ndarray]] = {}
        for key, requests in groups.items():
            results = self.runner.run(key, [r.tensors for r in requests])
            out.update((r.tile_id, res) for r, res in zip(requests, results, strict=True))
        return out

    def close(self) -> None:
        pass
