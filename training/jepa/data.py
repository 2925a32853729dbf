"""Pretraining batches over several datasets (paper §3.2): each step draws a dataset by weight, then a
patch size from that dataset's list, then a batch of that dataset's batch size (distinct tiles: at most
as many as the dataset holds); the collator samples the student's masks.

Every draw is a pure function of ``(seed, step)`` (dataset and patch size: identical on every rank)
and ``(seed, step, rank)`` (tiles and masks), so resuming at a step reproduces the same batches with no
sampler state to save, and DDP ranks always agree on the configuration of a step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from model.sensors import SENSORS, NormStats
from training.config import DatasetSpec, MaskSpec
from training.data import TileDataset, collate
from training.jepa.masks import StudentMasks, sample_masks
from training.normalization import resolve_stats


def step_generator(*key: int) -> torch.Generator:
    seed = int(np.random.SeedSequence(list(key)).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(seed)


@dataclass
class PretrainBatch:
    dataset: int
    patch_size: int
    data: dict[str, torch.Tensor]  # full model inputs (what the teacher sees)
    masks: StudentMasks

    def student_data(self) -> dict[str, torch.Tensor]:
        """The inputs with half of every series' dates hidden (temporal masking)."""
        out = dict(self.data)
        for m, keep in self.masks.date_keep.items():
            out[f"{m}_date_mask"] = keep
        return out

    def to(self, device: torch.device | str) -> PretrainBatch:
        return PretrainBatch(self.dataset, self.patch_size, {k: v.to(device) for k, v in self.data.items()},
                             self.masks.to(device))


class PretrainData(Dataset[PretrainBatch]):
    """Map-style over *steps*: ``data[step]`` is that step's batch for this rank (use with a DataLoader,
    ``batch_size=None``, to prefetch in workers)."""

    def __init__(self, specs: Sequence[DatasetSpec], masks: MaskSpec, seed: int, rank: int = 0) -> None:
        self.specs, self.mask_spec, self.seed, self.rank = tuple(specs), masks, seed, rank
        self.datasets: list[TileDataset] = []
        self.stats: list[dict[str, NormStats]] = []
        for spec in self.specs:
            probe = TileDataset(spec.root, split=spec.split, sensors=spec.sensors)
            stats = resolve_stats(spec.root, probe.sensors, spec.stats)
            ds = TileDataset(spec.root, split=spec.split, sensors=spec.sensors, stats=stats,
                             missing_bands=spec.missing_bands)
            if len(ds) == 0:
                raise ValueError(f"{spec.root}: no tiles in split {spec.split!r}")
            for p in spec.patch_sizes:
                grid = ds.index.tile_size_m / p
                if abs(grid - round(grid)) > 1e-6 or round(grid) < 2:
                    raise ValueError(f"{spec.root}: patch size {p} m must divide the {ds.index.tile_size_m} m "
                                     f"tiles into at least 2 x 2 patches")
            self.datasets.append(ds)
            self.stats.append(stats)
        w = np.array([s.weight for s in self.specs], dtype=np.float64)
        self.weights = w / w.sum()

    @property
    def sensors(self) -> tuple[str, ...]:
        return tuple(sorted({s for ds in self.datasets for s in ds.sensors}))

    def __len__(self) -> int:
        return 2**62

    def draw(self, step: int) -> tuple[int, int]:
        """(dataset index, patch size) of a step — the same on every rank."""
        g = step_generator(self.seed, step)
        d = int(torch.multinomial(torch.as_tensor(self.weights), 1, generator=g))
        sizes = self.specs[d].patch_sizes
        return d, sizes[int(torch.randint(len(sizes), (1,), generator=g))]

    def __getitem__(self, step: int) -> PretrainBatch:
        d, patch = self.draw(step)
        spec, ds = self.specs[d], self.datasets[d]
        g = step_generator(self.seed, step, self.rank + 1)
        # Never the same tile twice in a batch: the contrastive loss takes every other sample's patches as
        # negatives, and a copy of a tile (differing only by its date masks) is no negative. A dataset with
        # fewer tiles than its batch size gives smaller batches.
        idx = torch.randperm(len(ds), generator=g)[:spec.batch_size]
        batch = collate([ds[int(i)] for i in idx])
        data: dict[str, Any] = {k: v for k, v in batch.items() if k not in ("id", "label")}
        grid = round(ds.index.tile_size_m / patch)
        patch_modalities = [s for s in ds.sensors if not SENSORS[s].context]
        series = [s for s in ds.sensors if SENSORS[s].time_series]
        m = self.mask_spec
        masks = sample_masks(data, grid, patch_modalities, series, m.n_targets, m.target_scale, m.aspect_ratio,
                             m.min_context, m.modality_mask_ratio, m.date_keep_ratio, g)
        return PretrainBatch(d, patch, data, masks)

    def describe(self) -> list[dict[str, Any]]:
        return [{"name": ds.index.name, "root": spec.root, "tiles": len(ds), "sensors": list(ds.sensors),
                 "weight": spec.weight, "patch_sizes": list(spec.patch_sizes), "batch_size": spec.batch_size}
                for spec, ds in zip(self.specs, self.datasets, strict=True)]
