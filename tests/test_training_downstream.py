"""Downstream: metrics, fine-tuning / probing through the CLI, and the probe from vector labels on the
real Landsat 8 crop beating a random-feature baseline on held-out pixels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from training_fixtures import TINY

from model.checkpoint import file_sha256
from model.heads import load_head
from training.cli import main
from training.config import EncoderSpec
from training.downstream.metrics import confusion, multilabel_scores, scores
from training.downstream.raster_probe import probe_raster

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
