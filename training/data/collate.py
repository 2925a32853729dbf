"""Batching tiles: stack everything, pad time series of different lengths and say which dates are real."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from model.sensors import SENSORS

Item = dict[str, object]


def collate(items: Sequence[Item]) -> dict[str, object]:
    """Stack a list of ``TileDataset`` items into a batch.

    Each time series ``<m>`` ``[T_i, C, H, W]`` is zero-padded at the end to the longest ``T`` in the
    batch; ``<m>_dates`` is padded with 0 (never a real 1-based day) and ``<m>_date_mask`` ``[B, T]``
    (True = real date) is added — always, even when nothing was padded, so the batch keys do not
    depend on the batch. ``id`` becomes a list of strings; every other tensor is stacked and must have
    the same shape across the batch.
    """
    if not items:
        raise ValueError("collate: empty batch")
    keys = list(items[0])
    for it in items[1:]:
        if set(it) != set(keys):
            raise ValueError(f"collate: items have different keys: {sorted(keys)} vs {sorted(it)} "
                             f"(tile {it.get('id')!r}); batch tiles with the same sensors")
    ids = [str(it.get("id")) for it in items]
    batch: dict[str, object] = {}
    for key in keys:
        values = [it[key] for it in items]
        sensor = SENSORS.get(key)
        if key == "id":
            batch[key] = ids
        elif sensor is not None and sensor.time_series:
            data, dates, mask = _pad_series(key, values, [it.get(f"{key}_dates") for it in items], ids)
            batch[key], batch[f"{key}_dates"], batch[f"{key}_date_mask"] = data, dates, mask
        elif key.endswith("_dates") and SENSORS.get(key[: -len("_dates")]) is not None:
            continue  # handled with its series
        else:
            if not all(isinstance(v, torch.Tensor) for v in values):
                batch[key] = values
                continue
            shapes = {tuple(v.shape) for v in values}  # type: ignore[union-attr]
            if len(shapes) > 1:
                raise ValueError(f"collate: {key!r} has different shapes across the batch {sorted(shapes)} "
                                 f"(tiles {ids})")
            batch[key] = torch.stack(values)  # type: ignore[arg-type]
    return batch


def _pad_series(key: str, values: list[object], dates: list[object],
                ids: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    for v, d, tid in zip(values, dates, ids, strict=True):
        if not isinstance(v, torch.Tensor) or v.ndim != 4:
            raise ValueError(f"collate: tile {tid!r}: {key!r} must be a [T, C, H, W] tensor")
        if not isinstance(d, torch.Tensor) or d.shape != (v.shape[0],):
            raise ValueError(f"collate: tile {tid!r}: {key}_dates must be a [{v.shape[0]}] tensor")
    tensors: list[torch.Tensor] = values  # type: ignore[assignment]
    inner = {tuple(v.shape[1:]) for v in tensors}
    if len(inner) > 1:
        raise ValueError(f"collate: {key!r} has different [C, H, W] across the batch {sorted(inner)} "
                         f"(tiles {ids})")
    t_max = max(v.shape[0] for v in tensors)
    b = len(tensors)
    data = tensors[0].new_zeros((b, t_max, *tensors[0].shape[1:]))
    out_dates = torch.zeros((b, t_max), dtype=torch.int64)
    mask = torch.zeros((b, t_max), dtype=torch.bool)
    for i, (v, d) in enumerate(zip(tensors, dates, strict=True)):
        t = v.shape[0]
        data[i, :t] = v
        out_dates[i, :t] = d  # type: ignore[index]
        mask[i, :t] = True
    return data, out_dates, mask
