"""ANYSAT_DEVICE and what follows from it, as far as a machine without a GPU can prove: parsing and settings, the
providers chosen (the available-provider list is passed in as data where a GPU build would be needed, and the test
says so), the worker's refusal of a device it cannot use (real `anysat worker` processes: exit code and message),
ONNX Runtime absent (a real interpreter in which `import onnxruntime` fails), IO binding on the CPU provider against
a plain run (real sessions), and the eager backend and heads on an explicit device."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from model_fixtures import OFFICIAL_TINY
from pydantic import ValidationError

from model.checkpoint import file_sha256
from service.runtime.configuration import ModalityConfig
from service.runtime.device import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    TENSORRT_PROVIDER,
    CudaOptions,
    Device,
    DeviceUnavailable,
    bound_run,
    check_device,
    device_providers,
)
from service.runtime.export import ExportCache, example_inputs
from service.runtime.runner import EagerBackend, ExportedBackend, ModelRunner, session_options
from service.runtime.settings import ModelWorkerSettings, RuntimeSettings
from service.runtime.worker import EXIT_DEVICE_UNAVAILABLE

SMALL = ModalityConfig((("s2", 6),), patch_size=20, output="all")
HAS_CUDA_ORT = CUDA_PROVIDER in __import__("onnxruntime").get_available_providers()


@pytest.mark.parametrize(("text", "kind", "index", "torch_name"), [
    ("cpu", "cpu", 0, "cpu"), ("cuda", "cuda", 0, "cuda:0"), ("cuda:3", "cuda", 3, "cuda:3"),
    (" CUDA:1 ", "cuda", 1, "cuda:1"),
])
def test_device_parses(text: str, kind: str, index: int, torch_name: str) -> None:
    d = Device.parse(text)
    assert (d.kind, d.index, d.torch) == (kind, index, torch_name)


@pytest.mark.parametrize("text", ["gpu", "cuda:", "cuda:-1", "cpu:0", "cuda:x", "tpu", ""])
def test_device_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"cpu, cuda or cuda:N|takes no index"):
        Device.parse(text)


def test_settings_device_precision_and_cuda_options() -> None:
    s = RuntimeSettings(device="cuda:2", cuda_mem_limit_gb=4, cudnn_conv_algo_search="EXHAUSTIVE", tensorrt=True)
    assert s.device == "cuda:2" and s.target == Device("cuda", 2)
    opts = s.cuda_options().provider_options(s.target)
    assert opts == {"device_id": "2", "arena_extend_strategy": "kNextPowerOfTwo",
                    "cudnn_conv_algo_search": "EXHAUSTIVE", "gpu_mem_limit": str(4 * 2**30)}
    assert "gpu_mem_limit" not in RuntimeSettings().cuda_options().provider_options(Device("cuda"))
    with pytest.raises(ValidationError, match="device must be cpu, cuda or cuda:N"):
        RuntimeSettings(device="gpu")
    with pytest.raises(ValidationError, match="precision fp16 is a graph of runtime onnx"):
        RuntimeSettings(precision="fp16", runtime="torchscript")
    with pytest.raises(ValidationError):
        RuntimeSettings(precision="fp8")
    assert RuntimeSettings(precision="fp16").precision == "fp16"


def test_providers_follow_the_device() -> None:
    assert device_providers(Device("cpu")) == [(CPU_PROVIDER, {})]
    # The lists below stand for what a GPU build of ONNX Runtime reports (none is installed here).
    gpu_build = [TENSORRT_PROVIDER, CUDA_PROVIDER, CPU_PROVIDER]
    chosen = device_providers(Device("cuda", 1), CudaOptions(tensorrt=True), available=gpu_build)
    assert [p for p, _ in chosen] == [TENSORRT_PROVIDER, CUDA_PROVIDER, CPU_PROVIDER]
    assert chosen[0][1]["device_id"] == "1" and chosen[1][1]["device_id"] == "1"
    no_trt = device_providers(Device("cuda"), CudaOptions(tensorrt=True), available=[CUDA_PROVIDER, CPU_PROVIDER])
    assert [p for p, _ in no_trt] == [CUDA_PROVIDER, CPU_PROVIDER]  # asked for, absent: skipped, logged
    with pytest.raises(DeviceUnavailable, match=r"no CUDAExecutionProvider.*ANYSAT_DEVICE=cpu"):
        device_providers(Device("cuda"), available=[CPU_PROVIDER])


@pytest.mark.skipif(HAS_CUDA_ORT, reason="this machine's ONNX Runtime has CUDA")
def test_check_device_refuses_cuda_without_it() -> None:
    assert check_device(Device("cpu"), "onnx")["providers"][-1] == CPU_PROVIDER
    with pytest.raises(DeviceUnavailable, match=r"ANYSAT_DEVICE=cuda:0: this ONNX Runtime has no CUDA"):
        check_device(Device("cuda"), "onnx")
    if not torch.cuda.is_available():
        for runtime in ("eager", "torchscript"):
            with pytest.raises(DeviceUnavailable, match=f"torch .* sees no CUDA device \\(runtime {runtime}\\)"):
                check_device(Device("cuda"), runtime)


@pytest.mark.skipif(HAS_CUDA_ORT or torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize(("env", "expected"), [
    ({"ANYSAT_DEVICE": "cuda"}, "this ONNX Runtime has no CUDAExecutionProvider"),
    # The torch check itself is test_check_device_refuses_cuda_without_it's; as processes, these are the slow tier.
    pytest.param({"ANYSAT_DEVICE": "cuda:1", "ANYSAT_RUNTIME": "eager"}, "sees no CUDA device (runtime eager)",
                 marks=pytest.mark.slow),
    pytest.param({"ANYSAT_DEVICE": "cuda", "ANYSAT_RUNTIME": "torchscript"},
                 "sees no CUDA device (runtime torchscript)", marks=pytest.mark.slow),
])
def test_worker_process_refuses_cuda(env: dict[str, str], expected: str, tmp_path) -> None:
    """A real `anysat worker` told to use a GPU it has not got exits at once with its own code and a message
    naming the setting and the fix — it does not load the model, and does not quietly serve on the CPU."""
    environ = {**os.environ, **env, "ANYSAT_REDIS_URL": "redis://127.0.0.1:1/0",  # never reached
               "ANYSAT_CHECKPOINT": str(tmp_path / "never-read.safetensors"), "ANYSAT_EXPORT_DIR": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "anysat.cli", "worker"], env=environ, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == EXIT_DEVICE_UNAVAILABLE, r.stderr
    assert "anysat worker: refusing to start: ANYSAT_DEVICE=cuda" in r.stderr and expected in r.stderr, r.stderr
    assert "ANYSAT_DEVICE=cpu" in r.stderr and "Traceback" not in r.stderr


NO_ORT = r"""
import sys
sys.modules["onnxruntime"] = None  # what an install without the [cpu]/[gpu] extra looks like to `import`
import json, numpy as np, torch
import service.gateway.app, service.runtime.runner, service.runtime.export, service.runtime.worker  # all import
from model import create_model
from service.runtime.device import DeviceUnavailable, check_device, Device, onnxruntime
from service.runtime.runner import ModelRunner
from service.runtime.configuration import ModalityConfig
from service.runtime.export import example_inputs
out = {}
check_device(Device("cpu"), "eager")  # eager needs no ONNX Runtime
config = ModalityConfig((("s2", 6),), patch_size=20, output="tile")
data = {k: v[0].numpy() for k, v in example_inputs(config, batch=1, dates=3).items() if not k.endswith("_mask")}
out["eager_shape"] = list(ModelRunner(create_model(checkpoint=sys.argv[1])).run(config.key(), [data])[0]
                          ["embedding"].shape)
for what, call in [("onnxruntime", onnxruntime), ("check_onnx", lambda: check_device(Device("cpu"), "onnx"))]:
    try:
        call()
    except DeviceUnavailable as exc:
        out[what] = str(exc)
try:
    from model.export import check_export
    check_export(create_model(checkpoint=sys.argv[1]), config.modalities, 20, "tile", None, [], "x.onnx")
except ImportError as exc:
    out["model_export"] = str(exc)
import contextlib, io, pathlib, tempfile
from service.runtime.export import main as export_main
with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stderr(io.StringIO()) as err:
    (pathlib.Path(tmp) / "c.json").write_text(json.dumps(config.to_dict()))
    rc = export_main(["--checkpoint", sys.argv[1], "--config", f"{tmp}/c.json", "--out", f"{tmp}/out"])
    out["export_command"] = [rc, err.getvalue(), pathlib.Path(tmp, "out").exists()]
print(json.dumps(out))
"""


def test_without_onnxruntime_only_what_runs_graphs_fails_and_says_which_extra() -> None:
    r = subprocess.run([sys.executable, "-c", NO_ORT, str(OFFICIAL_TINY)], capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["eager_shape"] == [256]
    for key in ("onnxruntime", "check_onnx", "model_export"):
        assert "ONNX Runtime is not installed" in out[key] and '".[serve,cpu]"' in out[key], out
    rc, err, exported = out["export_command"]
    assert rc == 1 and "error: ONNX Runtime is not installed" in err and not exported  # before any export


@pytest.fixture(scope="module")
def cache(tiny, tmp_path_factory) -> ExportCache:
    c = ExportCache(tmp_path_factory.mktemp("exports"), tiny, file_sha256(OFFICIAL_TINY))
    c.get(SMALL)
    return c


def _requests(n: int) -> list[dict[str, np.ndarray]]:
    data = example_inputs(SMALL, batch=n, dates=7, seed=3)
    out = []
    for i, dates in enumerate((7, 3, 5, 7, 2)[:n]):
        out.append({k: v[i, :dates].numpy() for k, v in data.items() if not k.endswith("_date_mask")})
    return out


def test_io_binding_on_the_cpu_provider_equals_a_plain_run(tiny, cache) -> None:
    """The IO-binding code path a CUDA worker takes, run on the CPU provider (where ORT binds without copying): the
    same graph through ``bound_run`` and through ``session.run`` gives identical results, padded batch included."""
    import onnxruntime as ort

    export, _ = cache.get(SMALL)
    names = [i["name"] for i in export.manifest["inputs"]]
    session = ort.InferenceSession(str(export.directory / "model.onnx"), session_options(),
                                   providers=[CPU_PROVIDER])
    feed = {k: v.numpy() for k, v in example_inputs(SMALL, batch=3, dates=5, seed=9).items()}
    feed["s2_date_mask"][1, 3:] = False
    plain = session.run(None, {n: feed[n] for n in names})[0]
    bound = bound_run(session, names, Device("cpu"))
    np.testing.assert_array_equal(bound(feed), plain)
    np.testing.assert_array_equal(bound(feed), plain)  # a binding per call: a second run is not stale

    requests = _requests(5)
    plain_runner = ModelRunner(tiny, ExportedBackend(cache, "onnx", io_binding=False))
    bound_runner = ModelRunner(tiny, ExportedBackend(cache, "onnx", io_binding=True))
    assert plain_runner.backend.io_binding is False and bound_runner.backend.io_binding is True
    assert ExportedBackend(cache, "onnx").io_binding is False  # default: only CUDA binds
    for a, b in zip(plain_runner.run(SMALL.key(), requests), bound_runner.run(SMALL.key(), requests), strict=True):
        np.testing.assert_array_equal(a["embedding"], b["embedding"])


def test_backends_and_heads_on_an_explicit_device(tiny, cache, tmp_path) -> None:
    """Device plumbing on the one device here: the eager model and a head are on it (their parameters' device),
    TorchScript takes no ONNX Runtime providers, and the results equal the default runner's."""
    from model.heads import Head, HeadConfig, save_head

    save_head(Head(HeadConfig("classification", tiny.config.embed_dim, ("a", "b", "c"), patch_size=20,
                              modalities=("s2",))), tmp_path / "cls.safetensors")
    requests = _requests(2)
    cpu = Device("cpu")
    eager = EagerBackend(tiny, cpu)
    assert eager.device == cpu and next(eager.model.parameters()).device.type == "cpu"
    ts = ExportedBackend(cache, "torchscript", device=cpu)
    assert ts.providers == [] and ModelRunner(tiny, ts).device == cpu
    runner = ModelRunner(tiny, eager, heads_dir=tmp_path)
    assert runner.device == cpu
    for x, y in zip(runner.run(SMALL.key(), requests), ModelRunner(tiny).run(SMALL.key(), requests), strict=True):
        np.testing.assert_array_equal(x["embedding"], y["embedding"])
    tile = ModalityConfig(SMALL.modalities, SMALL.patch_size, "tile", head="cls")
    logits = runner.run(tile.key(), requests)
    assert next(runner.head("cls").parameters()).device.type == "cpu"
    assert [r["logits"].shape for r in logits] == [(3,), (3,)]
    onnx_logits = ModelRunner(tiny, ExportedBackend(cache, "onnx"), heads_dir=tmp_path).run(tile.key(), requests)
    for x, y in zip(logits, onnx_logits, strict=True):
        assert np.abs(x["logits"] - y["logits"]).max() < 2e-5


def test_worker_settings_document_device_fields() -> None:
    fields = ModelWorkerSettings.model_fields
    for name in ("device", "precision", "io_binding", "cuda_arena_extend_strategy", "cudnn_conv_algo_search",
                 "cuda_mem_limit_gb", "tensorrt"):
        assert fields[name].description, name
