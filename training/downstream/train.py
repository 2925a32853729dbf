"""``anysat train finetune`` / ``anysat train probe`` on a labelled tile dataset (paper §3.3).

Linear probing freezes the encoder, computes its features once, and fits the head on them; fine-tuning
trains encoder and head together (the encoder at ``encoder_lr``). Every epoch evaluates on the held-out
split (OA, macro / weighted F1, mIoU), prints one line and appends it to ``metrics.csv``; the head is
written in the format the gateway serves (``model.heads``).

``task="change"`` is change detection as binary segmentation over a time series (the paper's BraDD-S1TS:
deforestation between the first and last image of a Sentinel-1 series): the segmentation head and
machinery on a 2-class mask (1 = change), a cross-entropy that up-weights the rare change class, and the
change class's IoU / F1 / precision / recall on top of the usual metrics.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from model.checkpoint import file_sha256, save_checkpoint
from model.encoder import AnySat
from model.heads import Head, HeadConfig, save_head
from model.sensors import SENSORS
from training import distributed
from training.build import build_encoder
from training.config import DownstreamConfig, save_config
from training.data import TileDataset, collate
from training.data.format import label_path
from training.data.tilefile import read_label_file
from training.downstream.metrics import change_scores, confusion, multilabel_scores, scores
from training.normalization import resolve_stats, stats_to_json
from training.progress import CsvLog

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")
BASE_METRICS = ("oa", "f1_macro", "f1_weighted", "miou")
CHANGE_METRICS = ("iou_change", "f1_change", "precision_change", "recall_change")
# Inverse-frequency weight of the change class, clamped: never below 1 (change is the class we score,
# so it is not down-weighted even where it is common) and at most 50 (a handful of change pixels in the
# training labels must not turn the loss into "predict change everywhere").
CHANGE_WEIGHT_RANGE = (1.0, 50.0)


@dataclass(frozen=True)
class Task:
    kind: str  # "classification" | "segmentation" (the head kind; change detection is segmentation)
    classes: tuple[str, ...]
    multi_label: bool = False
    ignore: int | None = None  # segmentation: label value of unlabelled pixels
    output_modality: str | None = None
    upsample: int = 1
    change: bool = False  # change detection: 2 classes, 1 = change
    class_weights: tuple[float, ...] | None = None  # cross-entropy weights per class (change detection)


def resolve_task(cfg: DownstreamConfig, ds: TileDataset) -> Task:
    spec = ds.index.label
    if spec is None:
        raise ValueError(f"{cfg.dataset}: the dataset has no labels")
    kind = "segmentation" if spec.kind == "mask" else "classification"
    if cfg.task == "change":
        check_change_dataset(ds)
    elif cfg.task != "auto" and cfg.task != kind:
        raise ValueError(f"task {cfg.task!r} does not fit the dataset's {spec.kind!r} labels")
    if kind == "classification":
        return Task(kind, spec.classes, multi_label=spec.kind == "multilabel")
    out = cfg.output_modality or next(s for s in ds.sensors if not SENSORS[s].context)
    if out not in ds.sensors or SENSORS[out].context:
        raise ValueError(f"output_modality {out!r} must be one of the dataset's spatial sensors {list(ds.sensors)}")
    u = SENSORS[out].subpatch / float(spec.gsd or 0)
    if u < 1 or abs(u - round(u)) > 1e-6:
        raise ValueError(f"labels at {spec.gsd} m cannot be predicted from {out} sub-patches of "
                         f"{SENSORS[out].subpatch} m (need a whole number of label pixels per sub-patch)")
    task = Task(kind, spec.classes, ignore=spec.nodata, output_modality=out, upsample=round(u))
    if cfg.task != "change":
        return task
    pos_weight = cfg.change_pos_weight
    if pos_weight is None:
        pos_weight = change_weight_from_frequencies(mask_class_counts(ds), cfg.dataset)
    return replace(task, change=True, class_weights=(1.0, pos_weight))


def check_change_dataset(ds: TileDataset) -> None:
    """Change detection needs a 2-class mask (1 = change) and a time series among the spatial sensors."""
    spec = ds.index.label
    if spec is None or spec.kind != "mask" or len(spec.classes) != 2:
        got = "no labels" if spec is None else f"{spec.kind!r} labels, classes {list(spec.classes)}"
        raise ValueError(f"task 'change' expects a mask label with 2 classes (0 = no change, 1 = change); "
                         f"{ds.root} has {got}")
    series = [s for s in ds.sensors if SENSORS[s].time_series and not SENSORS[s].context]
    if not series:
        # Change is between dates: a single acquisition per sensor gives the encoder nothing to compare.
        raise ValueError(f"task 'change' needs a time series: none of the sensors {list(ds.sensors)} is a spatial "
                         f"time series (e.g. s1-asc, s2)")


def mask_class_counts(ds: TileDataset) -> torch.Tensor:
    """Labelled pixels per class over the split's masks, read without the imagery; nodata is not counted."""
    spec = ds.index.label
    assert spec is not None and spec.gsd is not None  # check_change_dataset: a mask label
    side = round(ds.index.tile_size_m / spec.gsd)
    counts = torch.zeros(len(spec.classes), dtype=torch.int64)
    for tile in ds.tiles:
        mask = torch.from_numpy(read_label_file(label_path(ds.root, tile.id), side)[0].astype("int64"))
        counts += confusion(mask, mask, len(spec.classes), spec.nodata).diag()  # same nodata rule as the metrics
    return counts


def change_weight_from_frequencies(counts: torch.Tensor, where: str) -> float:
    """The change class's inverse frequency relative to no-change, ``n_0 / n_1``, clamped to ``CHANGE_WEIGHT_RANGE``."""
    no_change, change = (int(v) for v in counts)
    if change == 0:
        raise ValueError(f"{where}: the training masks hold no change pixels (class 1); change detection cannot be "
                         f"learned (or weighted) from them — set change_pos_weight to train anyway")
    lo, hi = CHANGE_WEIGHT_RANGE
    return min(hi, max(lo, no_change / change))


def encoder_features(encoder: AnySat, data: dict[str, torch.Tensor], task: Task, patch_size: int) -> torch.Tensor:
    """Tile embedding ``[B, D]`` (classification) or dense features ``[B, h, w, 2D]`` (segmentation)."""
    if task.kind == "classification":
        return encoder(data, patch_size=patch_size, output="tile")
    return encoder(data, patch_size=patch_size, output="dense", output_modality=task.output_modality)


def task_loss(task: Task, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if task.kind == "classification":
        if task.multi_label:
            return F.binary_cross_entropy_with_logits(logits, labels.float())
        return F.cross_entropy(logits, labels)
    if logits.shape[-2:] != labels.shape[-2:]:
        raise ValueError(f"segmentation logits {tuple(logits.shape[-2:])} do not match the label mask "
                         f"{tuple(labels.shape[-2:])}")
    weight = None if task.class_weights is None else torch.tensor(task.class_weights, device=logits.device,
                                                                      dtype=logits.dtype)
    return F.cross_entropy(logits, labels, weight=weight, ignore_index=-100 if task.ignore is None else task.ignore)


def task_metrics(task: Task, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    if task.multi_label:
        return multilabel_scores(torch.sigmoid(logits), labels)
    cm = confusion(logits.argmax(1), labels, len(task.classes), task.ignore)
    return {**scores(cm), **change_scores(cm)} if task.change else scores(cm)


def metric_names(task: Task) -> tuple[str, ...]:
    """The metrics printed each epoch and written to ``metrics.csv``."""
    return BASE_METRICS + CHANGE_METRICS if task.change else BASE_METRICS


def _split_batch(batch: dict[str, Any], device: torch.device) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    labels = batch.pop("label")
    batch.pop("id", None)
    return {k: v.to(device) for k, v in batch.items()}, labels.to(device)


def _loader(ds: TileDataset, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=g)


@torch.no_grad()
def cache_features(encoder: AnySat, ds: TileDataset, task: Task, cfg: DownstreamConfig,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen-encoder features and labels of a whole split (linear probing computes them once)."""
    feats, labels = [], []
    for batch in _loader(ds, cfg.batch_size, False, cfg.seed):
        data, y = _split_batch(batch, device)
        feats.append(encoder_features(encoder, data, task, cfg.patch_size).cpu())
        labels.append(y.cpu())
    return torch.cat(feats), torch.cat(labels)


def _batches(x: torch.Tensor, y: torch.Tensor, size: int,
             g: torch.Generator | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    order = torch.randperm(len(x), generator=g) if g is not None else torch.arange(len(x))
    for i in range(0, len(x), size):
        j = order[i:i + size]
        yield x[j], y[j]


def run_downstream(cfg: DownstreamConfig, command: str = "", feature_baseline: str | None = None,
                   log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train a head (probe or fine-tune); returns the final held-out metrics and the written paths.

    ``feature_baseline="noise"`` replaces the encoder features by Gaussian noise of the same shape
    (a random-feature baseline: what a head learns from features that carry no information)."""
    say = log or (lambda s: print(s, file=sys.stderr, flush=True))
    device = distributed.resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out_dir)
    save_config(cfg, out / "config.json")
    probe = TileDataset(cfg.dataset, split=cfg.train_split, sensors=cfg.sensors)
    stats = resolve_stats(cfg.dataset, probe.sensors, cfg.stats)
    kw: dict[str, Any] = {"sensors": cfg.sensors, "stats": stats, "missing_bands": cfg.missing_bands}
    train_ds = TileDataset(cfg.dataset, split=cfg.train_split, **kw)
    eval_ds = TileDataset(cfg.dataset, split=cfg.eval_split, **kw)
    if len(train_ds) == 0 or len(eval_ds) == 0:
        raise ValueError(f"{cfg.dataset}: {len(train_ds)} tiles in {cfg.train_split!r}, {len(eval_ds)} in "
                         f"{cfg.eval_split!r}; both splits need tiles")
    task = resolve_task(cfg, train_ds)
    encoder = build_encoder(cfg.encoder, train_ds.sensors).to(device)
    colours = cfg.class_colours or tuple(PALETTE[i % len(PALETTE)] for i in range(len(task.classes)))
    head_cfg = HeadConfig(kind=task.kind, embed_dim=encoder.embed_dim, class_names=task.classes,
                          patch_size=cfg.patch_size, modalities=tuple(train_ds.sensors),
                          output_modality=task.output_modality, upsample=task.upsample,
                          multi_label=task.multi_label, colours=colours, task="change" if task.change else None)
    head = Head(head_cfg).to(device)
    if task.class_weights is not None:
        say(f"class weights {dict(zip(task.classes, task.class_weights, strict=True))}")
    csv = CsvLog(out / "metrics.csv", ["epoch", "train_loss", *metric_names(task)])
    history: list[dict[str, Any]] = []
    g = torch.Generator().manual_seed(cfg.seed)

    if cfg.freeze_encoder:
        encoder.eval().requires_grad_(False)
        x_train, y_train = cache_features(encoder, train_ds, task, cfg, device)
        x_eval, y_eval = cache_features(encoder, eval_ds, task, cfg, device)
        if feature_baseline == "noise":
            x_train, x_eval = torch.randn(x_train.shape, generator=g), torch.randn(x_eval.shape, generator=g)
        elif feature_baseline is not None:
            raise ValueError(f"feature_baseline must be None or 'noise', got {feature_baseline!r}")
        optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        for epoch in range(cfg.epochs):
            head.train()
            losses = []
            for xb, yb in _batches(x_train, y_train, cfg.batch_size, g):
                loss = task_loss(task, head(xb.to(device)), yb.to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
            head.eval()
            with torch.no_grad():
                logits = torch.cat([head(xb.to(device)).cpu() for xb, _ in _batches(x_eval, y_eval, 256, None)])
            history.append(_epoch_row(epoch, losses, task_metrics(task, logits, y_eval), metric_names(task), csv, say))
    else:
        encoder.train()
        params = [{"params": list(head.parameters()), "lr": cfg.lr},
                  {"params": list(encoder.parameters()), "lr": cfg.encoder_lr}]
        optimizer = torch.optim.AdamW(params, weight_decay=cfg.weight_decay)
        for epoch in range(cfg.epochs):
            encoder.train()
            head.train()
            losses = []
            for batch in _loader(train_ds, cfg.batch_size, True, cfg.seed + epoch):
                data, y = _split_batch(batch, device)
                loss = task_loss(task, head(encoder_features(encoder, data, task, cfg.patch_size)), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
            encoder.eval()
            head.eval()
            with torch.no_grad():
                pairs = [(head(encoder_features(encoder, d, task, cfg.patch_size)).cpu(), y.cpu())
                         for d, y in (_split_batch(b, device) for b in _loader(eval_ds, cfg.batch_size, False, 0))]
            logits, labels = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
            history.append(_epoch_row(epoch, losses, task_metrics(task, logits, labels), metric_names(task), csv, say))
    csv.close()

    # -- the head file (and the fine-tuned encoder it belongs to) ----------------------------------
    encoder_file = cfg.encoder.checkpoint
    if not cfg.freeze_encoder:
        encoder_file = str(save_checkpoint(encoder.cpu(), out / "encoder.safetensors",
                                           {"kind": "anysat-serve fine-tuned encoder", "command": command,
                                            "config": cfg.model_dump(mode="json")}))
    final = history[-1]
    metadata = {
        "metrics": final, "epochs": cfg.epochs, "mode": "linear probe" if cfg.freeze_encoder else "fine-tune",
        "dataset": {"root": cfg.dataset, "train_tiles": len(train_ds), "eval_tiles": len(eval_ds),
                    "eval_split": cfg.eval_split},
        "normalization": stats_to_json(stats), "feature_baseline": feature_baseline, "command": command,
        "config": cfg.model_dump(mode="json"),
    }
    head_cfg = HeadConfig(**{**head_cfg.__dict__, "metadata": metadata,
                             "encoder_sha256": file_sha256(encoder_file) if encoder_file else None})
    final_head = Head(head_cfg)
    final_head.load_state_dict(head.state_dict())
    head_path = save_head(final_head, cfg.head_path or out / "head.safetensors")
    (out / "metrics.json").write_text(json.dumps({"final": final, "history": history}, indent=1) + "\n")
    say(f"wrote {head_path} and {out / 'metrics.json'}")
    return {"metrics": final, "history": history, "head": str(head_path), "encoder": encoder_file}


_LABELS = {"oa": "OA", "f1_macro": "F1 macro", "f1_weighted": "F1 weighted", "miou": "mIoU",
           "iou_change": "IoU change", "f1_change": "F1 change", "precision_change": "P change",
           "recall_change": "R change"}


def _epoch_row(epoch: int, losses: list[float], metrics: dict[str, Any], names: tuple[str, ...], csv: CsvLog,
               say: Callable[[str], None]) -> dict[str, Any]:
    train_loss = sum(losses) / max(1, len(losses))
    if not math.isfinite(train_loss):
        raise FloatingPointError(f"epoch {epoch}: training loss is {train_loss}")
    row = {"epoch": epoch, "train_loss": train_loss, **{k: metrics[k] for k in names}}
    csv.write(row)
    say(f"epoch {epoch:3d}  loss {train_loss:.4f}  " + "  ".join(f"{_LABELS[k]} {metrics[k]:.4f}" for k in names))
    return {**row, **metrics}


