"""Pretraining: sampling by weight, loss goes down on a fixed batch, exact resume, DDP on 2 CPU processes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training_fixtures import TINY

from model import create_model
from model.inputs import plan_inputs
from training.config import DatasetSpec, EncoderSpec, MaskSpec, PretrainConfig
from training.jepa.data import PretrainData
from training.jepa.model import JEPAStudent, make_teacher
from training.pretrain import pretrain, train_step
from training.progress import read_csv
from training.schedules import ema_update

REPO = Path(__file__).resolve().parents[1]


def _config(datasets: tuple[Path, Path], out: Path, steps: int = 4, **kw: object) -> PretrainConfig:
    return PretrainConfig(
        encoder=EncoderSpec(name="tiny", overrides=TINY),
        datasets=(DatasetSpec(root=str(datasets[0]), weight=1.0, patch_sizes=(20, 30), batch_size=3, split=None),
                  DatasetSpec(root=str(datasets[1]), weight=2.0, patch_sizes=(20,), batch_size=2, split=None)),
        **{"predictor_depth": 1, "steps": steps, "lr": 1e-3, "warmup_steps": 1, "out_dir": str(out),
           "log_every": 1, "checkpoint_every": 100, **kw})


def test_sampling_follows_weights(synthetic_datasets: tuple[Path, Path]) -> None:
    specs = [DatasetSpec(root=str(synthetic_datasets[0]), weight=1.0, patch_sizes=(10, 20, 30), split=None),
             DatasetSpec(root=str(synthetic_datasets[1]), weight=3.0, patch_sizes=(20, 30), split=None)]
    data = PretrainData(specs, MaskSpec(), seed=0)
    n = 4000
    draws = [data.draw(s) for s in range(n)]
    counts = Counter(d for d, _ in draws)
    assert counts[1] / n == pytest.approx(0.75, abs=0.03)
    sizes0 = Counter(p for d, p in draws if d == 0)
    for p in (10, 20, 30):
        assert sizes0[p] / counts[0] == pytest.approx(1 / 3, abs=0.05)
    # every rank draws the same dataset and patch size at a step; tiles/masks are per rank
    other = PretrainData(specs, MaskSpec(), seed=0, rank=1)
    assert [other.draw(s) for s in range(50)] == draws[:50]
    assert data[7].patch_size == other[7].patch_size and data[7].dataset == other[7].dataset


def test_a_batch_never_holds_the_same_tile_twice(synthetic_datasets: tuple[Path, Path]) -> None:
    # 4 tiles, batch size 10: copies of a tile would be negatives of each other in the contrastive loss
    specs = [DatasetSpec(root=str(synthetic_datasets[1]), patch_sizes=(20,), batch_size=10, split=None)]
    data = PretrainData(specs, MaskSpec(), seed=0)
    for step in range(3):
        s2 = data[step].data["s2"]
        assert s2.shape[0] == 4
        flat = s2.reshape(4, -1)
        assert all(not torch.equal(flat[i], flat[j]) for i in range(4) for j in range(i + 1, 4))


def test_a_few_steps_on_a_fixed_batch_lower_the_loss(synthetic_datasets: tuple[Path, Path]) -> None:
    torch.manual_seed(0)
    cfg = _config(synthetic_datasets, Path("unused"))
    data = PretrainData(cfg.datasets, cfg.masks, seed=0)
    batch = data[0]
    student = JEPAStudent(create_model("tiny", modalities=data.sensors, **TINY), predictor_depth=1)
    teacher = make_teacher(student.encoder)
    opt = torch.optim.AdamW(student.optimizer_groups(0.0), lr=1e-3)
    losses = []
    for _ in range(12):
        loss, logs = train_step(student, teacher, batch, cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema_update(teacher, student.encoder, 0.996)
        losses.append(logs["loss"])
    assert losses[-1] < 0.8 * losses[0], losses
    assert plan_inputs(batch.data, batch.patch_size).n_patches == batch.masks.target.shape[1]


def test_resume_gives_the_same_next_steps(synthetic_datasets: tuple[Path, Path], tmp_path: Path) -> None:
    straight = pretrain(_config(synthetic_datasets, tmp_path / "a"))
    cfg_b = _config(synthetic_datasets, tmp_path / "b")
    pretrain(cfg_b, stop_at=2)
    assert not (tmp_path / "b" / "encoder.safetensors").exists()
    with pytest.raises(ValueError, match="different config"):
        pretrain(_config(synthetic_datasets, tmp_path / "b", lr=5e-4), resume=tmp_path / "b" / "state.pt")
    resumed = pretrain(cfg_b, resume=tmp_path / "b" / "state.pt")
    a, b = load_file(straight), load_file(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows_a, rows_b = read_csv(tmp_path / "a" / "losses.csv"), read_csv(tmp_path / "b" / "losses.csv")
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b] and len(rows_a) == 4


@pytest.mark.slow
def test_ddp_two_cpu_processes(synthetic_datasets: tuple[Path, Path], tmp_path: Path) -> None:
    cfg = _config(synthetic_datasets, tmp_path / "ddp", steps=3)
    path = tmp_path / "cfg.json"
    path.write_text(cfg.model_dump_json())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "training.cli", "pretrain", "--config", str(path)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from model.checkpoint import read_metadata

    _, meta = read_metadata(tmp_path / "ddp" / "encoder.safetensors")
    assert meta["world_size"] == 2 and meta["steps"] == 3
    assert len(read_csv(tmp_path / "ddp" / "losses.csv")) == 3
