"""``anysat train pretrain``: JEPA + contrastive self-supervised pretraining (paper §3.2).

Reads top to bottom: build data, student, teacher and optimizer; optionally resume; then one loop of
(schedules → teacher targets → student pass → losses → step → EMA → log → checkpoint); finally the
teacher is written as the encoder checkpoint.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from model.checkpoint import save_checkpoint
from model.inputs import plan_inputs
from training import distributed
from training.build import build_encoder
from training.checkpointing import load_state, save_state
from training.config import PretrainConfig, save_config
from training.jepa.data import PretrainBatch, PretrainData
from training.jepa.losses import contrastive_loss, jepa_loss
from training.jepa.model import JEPAStudent, make_teacher, normalise_targets, teacher_targets
from training.jepa.monitor import embedding_stats
from training.normalization import stats_to_json
from training.progress import CsvLog, Progress
from training.schedules import cosine_lr, ema_momentum, ema_update

LOG_FIELDS = ["step", "dataset", "patch_size", "loss", "jepa", "contrastive", "lr", "ema",
              "teacher_std", "teacher_rank", "n_target", "n_context"]
# Fields that may change when resuming (everything else must match the saved run).
RESUMABLE = ("steps", "out_dir", "device", "num_workers", "log_every", "checkpoint_every")


def _as_is(batch: PretrainBatch) -> PretrainBatch:
    return batch


def train_step(model: torch.nn.Module, teacher: torch.nn.Module, batch: PretrainBatch,
               config: PretrainConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """One forward pass: teacher targets, student prediction, L = w_J·L_JEPA + w_C·L_con."""
    plan = plan_inputs(batch.data, batch.patch_size)
    raw = teacher_targets(teacher, batch.data, plan)  # (B, P, D), no masking at all
    target = normalise_targets(raw) if config.target_norm else raw
    out = model(batch.student_data(), plan, batch.masks)
    l_jepa = jepa_loss(out.pred, target, batch.masks.target, config.jepa_loss)
    l_con = contrastive_loss(out.patch_tokens, config.temperature, config.contrastive_positives_in_denominator)
    loss = config.jepa_weight * l_jepa + config.contrastive_weight * l_con
    monitor = embedding_stats(raw)
    logs = {"loss": loss.item(), "jepa": l_jepa.item(), "contrastive": l_con.item(),
            "teacher_std": monitor["std"], "teacher_rank": monitor["rank"],
            "n_target": float(batch.masks.target.sum(1).float().mean()),
            "n_context": float(batch.masks.context_valid.sum(1).float().mean())}
    return loss, logs


def pretrain(config: PretrainConfig, resume: str | Path | None = None, command: str = "",
             stop_at: int | None = None) -> Path:
    """Run (or continue, from ``resume``) pretraining; returns the teacher encoder checkpoint path.

    ``stop_at``: leave after that many steps with a training state saved (a time-limited job; the
    schedules still follow ``config.steps``), without writing the encoder."""
    info = distributed.setup(config.device)
    torch.manual_seed(config.seed)
    out = Path(config.out_dir)
    if info.is_main:
        save_config(config, out / "config.json")

    # -- data, student, teacher, optimizer ------------------------------------------------------
    data = PretrainData(config.datasets, config.masks, config.seed, info.rank)
    student = JEPAStudent(build_encoder(config.encoder, data.sensors), config.predictor_depth,
                          config.predictor_dim).to(info.device)
    teacher = make_teacher(student.encoder)
    optimizer = torch.optim.AdamW(student.optimizer_groups(config.weight_decay), lr=config.lr)
    start = 0
    if resume is not None:
        state = load_state(resume, modules={"student": student, "teacher": teacher}, optimizer=optimizer,
                           config=config.model_dump(mode="json"), may_differ=RESUMABLE)
        start = int(state["step"])
    model = distributed.wrap(student, info)
    end = config.steps if stop_at is None else min(stop_at, config.steps)
    loader = DataLoader(data, batch_size=None, sampler=range(start, end), collate_fn=_as_is,
                        num_workers=config.num_workers, persistent_workers=False)
    log = CsvLog(out / "losses.csv", LOG_FIELDS) if info.is_main else None
    bar = Progress(config.steps, start, "pretrain", enabled=info.is_main)
    names = [d["name"] for d in data.describe()]
    last: dict[str, float] = {}

    # -- the loop ---------------------------------------------------------------------------------
    for step, batch in zip(range(start, end), loader, strict=True):
        lr = cosine_lr(step, config.steps, config.lr, config.min_lr, config.warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = batch.to(info.device)
        loss, logs = train_step(model, teacher, batch, config)
        if not math.isfinite(logs["loss"]):
            raise FloatingPointError(f"step {step}: loss is {logs['loss']} ({logs}); lower lr or check inputs")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(student.parameters(), config.grad_clip)
        optimizer.step()
        momentum = ema_momentum(step, config.steps, *config.ema)
        ema_update(teacher, student.encoder, momentum)

        logs = {k: distributed.all_mean(v, info) for k, v in logs.items()}
        last = logs
        if log is not None and (step % config.log_every == 0 or step + 1 == config.steps):
            log.write({"step": step, "dataset": names[batch.dataset], "patch_size": batch.patch_size,
                       "lr": lr, "ema": momentum, **logs})
        bar.update(loss=logs["loss"], jepa=logs["jepa"], con=logs["contrastive"], rank=logs["teacher_rank"])
        done = step + 1
        if info.is_main and (done % config.checkpoint_every == 0 or done == end):
            save_state(out / "state.pt", step=done, modules={"student": student, "teacher": teacher},
                       optimizer=optimizer, config=config.model_dump(mode="json"), extra={"last": last})
    bar.close()
    if log is not None:
        log.close()

    # -- the teacher is the encoder (paper §3.2: the student is discarded) -------------------------
    path = out / "encoder.safetensors"
    if info.is_main and end == config.steps:
        meta: dict[str, Any] = {
            "kind": "anysat-serve pretrained encoder (teacher)",
            "method": "JEPA + contrastive (AnySat paper §3.2)",
            "sensors": list(data.sensors),
            "datasets": data.describe(),
            "steps": config.steps,
            "world_size": info.world_size,
            "final_losses": last,
            "normalization": {names[i]: stats_to_json(s) for i, s in enumerate(data.stats)},
            "config": config.model_dump(mode="json"),
            "command": command,
        }
        save_checkpoint(teacher, path, meta)
        print(f"wrote {path} and {out / 'losses.csv'}", file=sys.stderr)
    distributed.teardown(info)
    return path
