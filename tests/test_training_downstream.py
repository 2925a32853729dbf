"""Downstream: metrics, fine-tuning / probing through the CLI, the probe from vector labels on the
real Landsat 8 crop beating a random-feature baseline on held-out pixels, and change detection on a
synthetic time series beating the predict-change-everywhere baseline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from training_fixtures import TINY, write_change_dataset

from model.checkpoint import file_sha256
from model.heads import Head, HeadConfig, load_head, save_head
from training.cli import main
from training.config import DownstreamConfig, EncoderSpec
from training.data import LabelSpec, TileDataset, TileSensor, TileWriter
from training.downstream.metrics import change_scores, confusion, multilabel_scores, scores
from training.downstream.raster_probe import probe_raster
from training.downstream.train import (
    CHANGE_WEIGHT_RANGE,
    change_weight_from_frequencies,
    mask_class_counts,
    resolve_task,
)

REPO = Path(__file__).resolve().parents[1]
L8 = REPO / "examples/data/landsat8/LC08_224078_20200518_crop512.tif"
POLYGONS = REPO / "examples/data/landsat8/LC08_L1TP_224078_20200518_20200518_01_RT_polygons.gpkg"


def test_metrics_by_hand() -> None:
    cm = confusion(torch.tensor([0, 0, 1, 1, 1, 2]), torch.tensor([0, 1, 1, 1, -1, 2]), 3, ignore=-1)
    assert cm.tolist() == [[1, 0, 0], [1, 2, 0], [0, 0, 1]]
    s = scores(cm)
    assert s["oa"] == pytest.approx(4 / 5)
    f1 = [2 / 3, 0.8, 1.0]  # class 0: tp1 fp1 fn0; class 1: tp2 fp0 fn1; class 2: perfect
    assert s["f1_macro"] == pytest.approx(sum(f1) / 3)
    assert s["f1_weighted"] == pytest.approx((f1[0] * 1 + f1[1] * 3 + f1[2] * 1) / 5)
    assert s["miou"] == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
    m = multilabel_scores(torch.tensor([[0.9, 0.1], [0.8, 0.7]]), torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    assert m["oa"] == pytest.approx(3 / 4) and m["f1_per_class"] == pytest.approx([1.0, 0.0])


@pytest.mark.parametrize("command", ["probe", "finetune"])
def test_classification_cli(synthetic_datasets: tuple[Path, Path], tmp_path: Path, command: str) -> None:
    overrides = json.dumps({"encoder": {"name": "tiny", "overrides": {**TINY, "modalities": ["s1-asc", "s2"]}},
                            "dataset": str(synthetic_datasets[0])})
    (tmp_path / "cfg.json").write_text(overrides)
    rc = main([command, "--config", str(tmp_path / "cfg.json"), "--epochs", "2", "--batch-size", "2",
               "--patch-size", "30", "--out", str(tmp_path / "run")])
    assert rc == 0
    head = load_head(tmp_path / "run" / "head.safetensors")
    assert head.config.kind == "classification" and head.config.class_names == ("a", "b")
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    assert len(history) == 2 and {"oa", "f1_macro", "f1_weighted", "miou"} <= set(history[-1])
    if command == "finetune":  # the head names the fine-tuned encoder it belongs to
        assert head.config.encoder_sha256 == file_sha256(tmp_path / "run" / "encoder.safetensors")


def test_cli_errors_are_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.json").write_text(json.dumps({"datasets": [], "bogus": 1}))
    assert main(["pretrain", "--config", str(tmp_path / "bad.json")]) == 2
    assert "bogus" in capsys.readouterr().err


def test_probe_on_landsat_polygons_beats_random_features(tmp_path: Path) -> None:
    encoder = EncoderSpec(name="tiny", overrides={"embed_dim": 64, "depth": 2, "num_heads": 4, "modalities": ["l8"]})
    kw = {"raster": L8, "sensor": "l8", "labels": POLYGONS, "field": "name", "encoder": encoder,
          "bands": ["B2", "B3", "B4"], "classes": ["water", "crop", "tree", "developed"], "epochs": 10}
    real = probe_raster(out_dir=tmp_path / "real", **kw)
    noise = probe_raster(out_dir=tmp_path / "noise", feature_baseline="noise", **kw)
    assert real["labelled_pixels"]["developed"] == 0  # that polygon lies outside the crop
    support = real["metrics"]["support"]
    assert all(n > 50 for n in support[:3]), support  # every present class has held-out pixels
    assert real["metrics"]["oa"] > 0.9
    assert real["metrics"]["oa"] > noise["metrics"]["oa"] + 0.3
    head = load_head(tmp_path / "real" / "head.safetensors")
    assert head.config.kind == "segmentation" and head.config.output_modality == "l8"
    assert head.config.metadata["normalization"]["l8"]["mean"][0] == 0.0  # B8 absent: left unscaled


# -- change detection (binary segmentation over a time series) ------------------------------------------


def test_change_metrics_by_hand() -> None:
    # truth 1 1 1 0 0 0 -1 ; prediction 1 1 0 1 0 0 1: tp 2, fn 1, fp 1, tn 2 (the nodata pixel is skipped)
    cm = confusion(torch.tensor([1, 1, 0, 1, 0, 0, 1]), torch.tensor([1, 1, 1, 0, 0, 0, -1]), 2, ignore=-1)
    assert cm.tolist() == [[2, 1], [1, 2]]
    s = change_scores(cm)
    assert s == pytest.approx({"iou_change": 2 / 4, "f1_change": 4 / 6, "precision_change": 2 / 3,
                               "recall_change": 2 / 3})
    none_predicted = change_scores(torch.tensor([[5, 0], [3, 0]]))
    assert none_predicted == {"iou_change": 0.0, "f1_change": 0.0, "precision_change": 0.0, "recall_change": 0.0}
    with pytest.raises(ValueError, match="2x2"):
        change_scores(torch.eye(3))


def test_change_weight_from_frequencies() -> None:
    assert change_weight_from_frequencies(torch.tensor([90, 10]), "d") == pytest.approx(9.0)
    assert change_weight_from_frequencies(torch.tensor([10, 90]), "d") == 1.0  # change is never down-weighted
    assert change_weight_from_frequencies(torch.tensor([10_000, 1]), "d") == CHANGE_WEIGHT_RANGE[1]
    with pytest.raises(ValueError, match="no change pixels"):
        change_weight_from_frequencies(torch.tensor([10, 0]), "d")


def _change_cfg(tmp_path: Path, dataset: Path) -> Path:
    cfg = {"encoder": {"name": "tiny", "overrides": {**TINY, "modalities": ["s1-asc"]}}, "dataset": str(dataset)}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    return tmp_path / "cfg.json"


def test_change_probe_beats_predicting_change_everywhere(tmp_path: Path) -> None:
    data = write_change_dataset(tmp_path / "change")
    train = TileDataset(data, split="train")
    counts = mask_class_counts(train)
    assert int(counts.sum()) == 24 * 36 - 12 * 6  # the nodata rows are not counted
    rc = main(["probe", "--config", str(_change_cfg(tmp_path, data)), "--task", "change", "--epochs", "30",
               "--batch-size", "8", "--lr", "0.01", "--patch-size", "30", "--out", str(tmp_path / "run")])
    assert rc == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    final = metrics["final"]
    assert {"iou_change", "f1_change", "precision_change", "recall_change", "oa", "miou"} <= set(final)
    # Predicting change everywhere has IoU = the held-out change fraction (and all-no-change has 0).
    everywhere = final["support"][1] / sum(final["support"])
    assert final["iou_change"] > everywhere + 0.3, (final, everywhere)
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert "iou_change" in header and "recall_change" in header
    head = load_head(tmp_path / "run" / "head.safetensors")
    assert head.config.kind == "segmentation" and head.config.task == "change"  # served as any segmentation head
    assert head.config.class_names == ("no-change", "change")
    weights = head.config.metadata["config"]
    assert weights["task"] == "change" and weights["change_pos_weight"] is None
    expected_weight = float(counts[0] / counts[1])
    assert 1.0 < expected_weight < CHANGE_WEIGHT_RANGE[1]
    cfg = DownstreamConfig(encoder=EncoderSpec(overrides={**TINY, "modalities": ["s1-asc"]}), dataset=str(data),
                           task="change")
    assert resolve_task(cfg, train).class_weights == pytest.approx((1.0, expected_weight))
    assert resolve_task(cfg.model_copy(update={"change_pos_weight": 3.0}), train).class_weights == (1.0, 3.0)


def test_change_finetune_runs(tmp_path: Path) -> None:
    data = write_change_dataset(tmp_path / "change", n_train=4, n_val=2)
    rc = main(["finetune", "--config", str(_change_cfg(tmp_path, data)), "--task", "change", "--epochs", "1",
               "--batch-size", "4", "--patch-size", "30", "--change-pos-weight", "4", "--out", str(tmp_path / "run")])
    assert rc == 0
    assert "iou_change" in json.loads((tmp_path / "run" / "metrics.json").read_text())["final"]
    assert load_head(tmp_path / "run" / "head.safetensors").config.task == "change"


def test_change_task_validation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    three = write_change_dataset(tmp_path / "three", n_train=2, n_val=1, classes=("none", "loss", "gain"))
    rc = main(["probe", "--config", str(_change_cfg(tmp_path, three)), "--task", "change", "--epochs", "1",
               "--out", str(tmp_path / "run")])
    assert rc == 2
    assert "mask label with 2 classes" in capsys.readouterr().err
    enc = EncoderSpec(overrides={**TINY, "modalities": ["spot"]})
    spec = LabelSpec("mask", ("no-change", "change"), gsd=10.0)
    with TileWriter(tmp_path / "single", name="single", tile_size_m=60, sensors=("spot",), label=spec) as w:
        w.add("a", {"spot": TileSensor(np.zeros((3, 60, 60), np.float32))}, label=np.zeros((6, 6), np.int32))
    cfg = DownstreamConfig(encoder=enc, dataset=str(tmp_path / "single"), task="change")
    with pytest.raises(ValueError, match="needs a time series"):
        resolve_task(cfg, TileDataset(tmp_path / "single"))
    with pytest.raises(ValueError, match="change_pos_weight applies to task 'change' only"):
        DownstreamConfig(encoder=enc, dataset="x", change_pos_weight=2.0)


def test_change_head_round_trips(tmp_path: Path) -> None:
    cfg = HeadConfig("segmentation", 8, ("no-change", "change"), patch_size=30, modalities=("s1-asc",),
                     output_modality="s1-asc", task="change")
    head = Head(cfg)
    loaded = load_head(save_head(head, tmp_path / "change.safetensors"))
    assert loaded.config == cfg
    for a, b in zip(head.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    old = json.loads(cfg.to_json())
    del old["task"]  # a head file written before the field existed
    assert HeadConfig.from_json(json.dumps(old)).task is None
    with pytest.raises(ValueError, match="2 classes"):
        HeadConfig("segmentation", 8, ("a", "b", "c"), 30, ("s1-asc",), output_modality="s1-asc", task="change")
