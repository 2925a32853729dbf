"""fp16 graphs exported beside fp32, their numerics proven on ONNX Runtime's CPU provider (real exports, real
sessions): the manifest's cosine to eager fp32 on real-data-like inputs, normalisations and softmax left in fp32,
the refusal below the threshold, the cache key, the worker setting that loads them, and `anysat export --precision`.
The TreeSatAI configuration (aerial 300 px + s2 + s1-asc, patch 20 m, tile) and the command are the slow tier."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from model_fixtures import OFFICIAL_TINY

from model.checkpoint import file_sha256
from model.export import FP16_KEEP_FP32, MIN_COSINE, cosine_rows, smooth_inputs
from service.runtime.configuration import ModalityConfig
from service.runtime.export import ExportCache, ExportError, export_reduced, list_exports, main
from service.runtime.runner import ExportedBackend, ModelRunner

SMALL = ModalityConfig((("s2", 6),), patch_size=20, output="all")
TREESAT = ModalityConfig((("aerial", 300), ("s2", 6), ("s1-asc", 6)), patch_size=20, output="tile")


@pytest.fixture(scope="module")
def cache(tiny, tmp_path_factory) -> ExportCache:
    return ExportCache(tmp_path_factory.mktemp("exports"), tiny, file_sha256(OFFICIAL_TINY))


def _fp32_inputs_of(graph: onnx.ModelProto, op_type: str) -> list[int]:
    """Element types of the initializers that feed ``op_type`` nodes directly (e.g. LayerNorm's scale, bias)."""
    init = {i.name: i.data_type for i in graph.graph.initializer}
    return [init[x] for n in graph.graph.node if n.op_type == op_type for x in n.input if x in init]


def _check_fp16_export(cache: ExportCache, config: ModalityConfig) -> dict:
    fp16, hit = cache.get(config, "fp16")
    assert not hit
    fp32, fp32_hit = cache.get(config)
    assert fp32_hit and fp16.directory != fp32.directory == cache.path(config)  # fp32 made first, its key unchanged
    assert fp16.directory == cache.path(config, "fp16")
    m = fp16.manifest
    assert m["precision"] == "fp16" and m["fp32_export"] == fp32.manifest["name"]
    assert fp32.manifest["precision"] == "fp32"
    assert m["inputs"] == fp32.manifest["inputs"]  # fp32 in and out: the same feed as the fp32 graph
    assert m["cosine_vs_fp32"]["min"] >= MIN_COSINE and m["cosine_vs_fp32"]["min"] < 1.0
    assert {p.name for p in fp16.directory.iterdir()} == {"manifest.json", "model.onnx", "triton"}

    graph = onnx.load(str(fp16.directory / "model.onnx"))
    dtypes = [i.data_type for i in graph.graph.initializer]
    assert dtypes.count(onnx.TensorProto.FLOAT16) > dtypes.count(onnx.TensorProto.FLOAT)  # weights are fp16
    ln = _fp32_inputs_of(graph, "LayerNormalization")
    assert ln and set(ln) == {onnx.TensorProto.FLOAT}  # normalisations kept in fp32
    assert "Softmax" in FP16_KEEP_FP32 and "LayerNormalization" in FP16_KEEP_FP32
    assert (fp16.directory / "model.onnx").stat().st_size < 0.7 * (fp32.directory / "model.onnx").stat().st_size

    # The manifest's number is reproducible from outside: the fp16 graph against eager fp32 on fresh
    # real-data-like inputs (another seed), and it is a genuine reduction (not bit-equal to fp32).
    import onnxruntime as ort

    data = smooth_inputs(config.modalities, batch=3, dates=7, seed=11)
    names = [i["name"] for i in m["inputs"]]
    session = ort.InferenceSession(str(fp16.directory / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {n: data[n].numpy() for n in names})[0]
    with torch.no_grad():
        ref = cache.model(data, patch_size=config.patch_size, output=config.output).numpy()
    cos = cosine_rows(got, ref)
    assert cos.min() >= MIN_COSINE and np.abs(got - ref).max() > 1e-6
    return m


def test_fp16_export_beside_fp32_on_the_cpu_provider(cache) -> None:
    _check_fp16_export(cache, SMALL)
    again, hit = cache.get(SMALL, "fp16")
    assert hit and again.manifest["precision"] == "fp16"
    assert {e["precision"] for e in list_exports(cache.root)} == {"fp32", "fp16"}


def test_fp16_runner_serves_the_fp16_graph(tiny, cache) -> None:
    """ANYSAT_PRECISION=fp16's backend loads the fp16 graph (not the fp32 one) and its embeddings stay within the
    threshold of fp32's."""
    data = smooth_inputs(SMALL.modalities, batch=3, dates=5, seed=4)
    requests = [{k: v[i].numpy() for k, v in data.items() if not k.endswith("_date_mask")} for i in range(3)]
    fp16 = ModelRunner(tiny, ExportedBackend(cache, "onnx", precision="fp16")).run(SMALL.key(), requests)
    fp32 = ModelRunner(tiny, ExportedBackend(cache, "onnx")).run(SMALL.key(), requests)
    for a, b in zip(fp16, fp32, strict=True):
        assert cosine_rows(a["embedding"], b["embedding"]).min() >= MIN_COSINE
        assert not np.array_equal(a["embedding"], b["embedding"])
    with pytest.raises(ValueError, match="only runtime onnx"):
        ExportedBackend(cache, "torchscript", precision="fp16")


def test_fp16_refused_below_the_threshold_writes_nothing(tiny, cache, tmp_path) -> None:
    fp32, _ = cache.get(SMALL)
    with pytest.raises(ExportError, match="too far from fp32: cosine min"):
        export_reduced(tiny, SMALL, fp32, tmp_path / "fp16", min_cosine=0.99999999)  # fp16 cannot reach 1 - 1e-8
    assert not (tmp_path / "fp16").exists() and [p.name for p in tmp_path.iterdir()] == []
    with pytest.raises(ExportError, match="only fp16"):
        export_reduced(tiny, SMALL, fp32, tmp_path / "bf16", precision="bf16")
    with pytest.raises(ValueError, match="precision must be one of"):
        cache.get(SMALL, "int8")


@pytest.mark.slow
def test_export_command_precision(tmp_path, capsys) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"modalities": [["s2", 6]], "patch_size": 20, "output": "tile"}))
    out = tmp_path / "export"
    assert main(["--checkpoint", str(OFFICIAL_TINY), "--config", str(config), "--out", str(out),
                 "--precision", "fp16"]) == 0
    assert "beside its fp32 graph; cosine to eager fp32 min 0.99" in capsys.readouterr().out
    m = json.loads((tmp_path / "export.fp16" / "manifest.json").read_text())
    assert m["precision"] == "fp16" and (out / "model.onnx").is_file()
    for taken in (out, tmp_path / "other"):  # either directory existing refuses before any export
        (tmp_path / "other.fp16").mkdir(exist_ok=True)
        assert main(["--checkpoint", str(OFFICIAL_TINY), "--config", str(config), "--out", str(taken),
                     "--precision", "fp16"]) == 2
        assert "exists; choose a new directory" in capsys.readouterr().err


@pytest.mark.slow
def test_fp16_treesatai_configuration(cache) -> None:
    """The configuration the benchmark and the paper's numbers use, at the tiny size."""
    m = _check_fp16_export(cache, TREESAT)
    assert m["configuration"] == TREESAT.to_dict()
