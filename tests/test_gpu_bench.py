"""The device script, as far as a machine without a GPU can run it: without a GPU both entry points fail at once and
clearly (exit 2, a message, and a gpu.json saying why); `--device cpu --quick` runs every code path of the benchmark
(exports, each mode, IO binding, the time budget, the serving part with a real worker process) on the CPU so the
script cannot rot before a GPU is lent. The numbers it prints here mean nothing and are not asserted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_benchmark_without_a_gpu_fails_clearly(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--device", "cuda", "--out", str(tmp_path)],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "benchmarks.gpu: no CUDA GPU" in r.stderr and "--device cpu --quick" in r.stderr
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert result["error"].startswith("no CUDA GPU") and result["sizes"] == []
    assert result["environment"]["torch_cuda"] is False


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has nvidia-smi")
def test_device_script_without_a_gpu_fails_before_installing(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path), "ANYSAT_GPU_VENV": str(tmp_path / "venv")}
    r = subprocess.run(["bash", "benchmarks/gpu.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no NVIDIA GPU here" in r.stderr, r.stderr
    assert json.loads((tmp_path / "gpu.json").read_text())["error"].startswith("no NVIDIA GPU")
    assert not (tmp_path / "venv").exists()  # nothing installed on a machine it cannot benchmark


@pytest.mark.slow
def test_quick_cpu_run_exercises_every_mode(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--device", "cpu", "--quick", "--tensorrt",
                        "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    result = json.loads((tmp_path / "gpu.json").read_text())
    (size,) = result["sizes"]
    assert size["size"] == "tiny" and size["fp16_manifest_cosine_vs_fp32"]["min"] >= 0.999
    measured = {(row["mode"], row["batch"]) for row in size["rows"] if "tiles_per_s" in row}
    modes = ("eager-fp32", "eager-bf16", "eager-fp16", "ort-fp32", "ort-fp32-iobinding", "ort-fp16",
             "ort-fp16-iobinding")
    assert measured == {(m, b) for m in modes for b in (1, 2)}, size["rows"]
    for row in size["rows"]:
        if row["mode"].startswith("ort-fp16") and "tiles_per_s" in row:
            assert 0.999 <= row["cosine_vs_eager_fp32"] < 1.0
        if row["mode"] == "ort-fp32-iobinding" and "tiles_per_s" in row:
            assert row["cosine_vs_eager_fp32"] > 0.99999
    (trt,) = [row for row in size["rows"] if row["mode"] == "ort-tensorrt-fp16"]
    assert "TensorrtExecutionProvider not available" in trt["error"]  # recorded, not fatal
    (serving,) = result["serving"]
    assert serving["runtime"] == "onnx" and serving["served_tiles_per_s"] > 0 and serving["served_over_raw"] > 0
    assert "| tiny | ort-fp16-iobinding | 2 |" in r.stdout and "serving (tiny, onnx fp16, B=2)" in r.stdout
