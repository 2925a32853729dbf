"""Per-configuration export (ONNX, TorchScript, Triton repository, manifest), the export cache,
and the ONNX Runtime / TorchScript runners — real sessions, real files, real Redis + worker."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from model_fixtures import OFFICIAL_TINY

from model import create_model
from model.checkpoint import file_sha256
from service.engine.errors import GraphUnavailable
from service.engine.metrics import WorkerMetrics
from service.engine.queue import RedisQueue
from service.engine.settings import QueueSettings, WorkerSettings
from service.engine.worker import Worker
from service.runtime.configuration import ModalityConfig
from service.runtime.export import (
    RETRY_FAILED_S,
    ExportCache,
    ExportError,
    example_inputs,
    export_configuration,
    list_exports,
    main,
)
from service.runtime.runner import ExportedBackend, ModelRunner, runner_from_env

SMALL = ModalityConfig((("s2", 6), ("s1-asc", 6)), patch_size=20, output="all")


@pytest.fixture(scope="module")
def cache(tiny, tmp_path_factory) -> ExportCache:
    return ExportCache(tmp_path_factory.mktemp("exports"), tiny, file_sha256(OFFICIAL_TINY))


@pytest.fixture(scope="module")
def small_export(cache):
    result, hit = cache.get(SMALL)
    assert not hit
    return result


def test_export_writes_all_artefacts_and_manifest(small_export) -> None:
    d, m = small_export.directory, small_export.manifest
    assert {p.name for p in d.iterdir()} == {"manifest.json", "model.onnx", "model.ts", "triton"}
    assert m["checkpoint_sha256"] == file_sha256(OFFICIAL_TINY)
    assert m["configuration"] == SMALL.to_dict() and m["batch_key"] == SMALL.key()
    assert [i["name"] for i in m["inputs"]] == ["s2", "s2_dates", "s2_date_mask", "s1-asc", "s1-asc_dates",
                                               "s1-asc_date_mask"]
    assert m["inputs"][0]["dtype"] == "float32" and isinstance(m["inputs"][0]["shape"][0], str)  # dynamic batch
    assert m["outputs"][0]["shape"][1:] == [10, 256]  # class token + 3 x 3 patches
    assert max(m["max_abs_error_vs_eager"].values()) <= 1e-4
    # each output against an fp64 eager run is recorded too: well-conditioned here
    assert set(m["max_abs_error_vs_fp64"]) == {"eager", "onnx", "torchscript"}
    assert 0 < m["max_abs_error_vs_fp64"]["eager"] < 1e-5
    config = (d / "triton" / m["name"] / "config.pbtxt").read_text()
    assert "dynamic_batching" in config and 'platform: "onnxruntime_onnx"' in config
    # The Triton copy is self-contained (no external-data side file) and runs; it shares the export's file.
    triton_graph = d / "triton" / m["name"] / "1" / "model.onnx"
    assert triton_graph.stat().st_ino == (d / "model.onnx").stat().st_ino
    session = ort.InferenceSession(str(triton_graph))
    data = example_inputs(SMALL, batch=3, dates=4)
    out = session.run(None, {i.name: data[i.name].numpy() for i in session.get_inputs()})[0]
    assert out.shape == (3, 10, 256)


@pytest.mark.slow
def test_export_refuses_when_error_exceeds_limit(tiny, tmp_path) -> None:
    with pytest.raises(ExportError, match="disagrees with eager PyTorch"):
        export_configuration(tiny, SMALL, tmp_path / "strict", "sha", max_error=0.0, conditioning_factor=0.0)
    assert list(tmp_path.iterdir()) == []  # neither the export nor its temp dir is left


def test_export_rejects_invalid_configuration(tiny, tmp_path) -> None:
    with pytest.raises(ValueError, match="does not divide the tile side"):
        export_configuration(tiny, ModalityConfig((("s2", 6),), patch_size=40), tmp_path / "bad", "sha")


def test_export_command(tmp_path, capsys) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"modalities": [["s2", 4]], "patch_size": 20, "output": "tile"}))
    out = tmp_path / "exported"
    assert main(["--checkpoint", str(OFFICIAL_TINY), "--config", str(cfg), "--out", str(out)]) == 0
    assert "max |err| vs eager" in capsys.readouterr().out
    assert (out / "manifest.json").is_file()
    assert main(["--checkpoint", str(OFFICIAL_TINY), "--config", str(cfg), "--out", str(out)]) == 2


@pytest.mark.slow
def test_export_command_warms_the_workers_cache(tiny, tmp_path, capsys) -> None:
    """``--cache`` exports where a worker on the same checkpoint looks, so no request waits for the export."""
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"modalities": [["s2", 2]], "patch_size": 20, "output": "patch"}))
    root = tmp_path / "cache"
    argv = ["--checkpoint", str(OFFICIAL_TINY), "--config", str(cfg), "--cache", str(root)]
    assert main(argv) == 0
    assert "exported" in capsys.readouterr().out
    export, hit = ExportCache(root, tiny, file_sha256(OFFICIAL_TINY)).get(ModalityConfig((("s2", 2),), 20, "patch"))
    assert hit and export.manifest["configuration"]["output"] == "patch"
    assert main(argv) == 0
    assert "already in the cache" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # the cache holds exports checked at the workers' tolerance only
        main([*argv, "--max-error", "1e-3"])


def _race(root: str, queue: mp.Queue) -> None:
    model = create_model(checkpoint=OFFICIAL_TINY)
    result, hit = ExportCache(root, model, "sha-race").get(ModalityConfig((("s2", 2),), patch_size=10))
    queue.put((str(result.directory), hit))


@pytest.mark.slow
def test_cache_race_between_processes_leaves_one_complete_export(tmp_path) -> None:
    ctx = mp.get_context("spawn")
    results: mp.Queue = ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(tmp_path), results)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    dirs = {results.get(timeout=5)[0] for _ in procs}
    assert len(dirs) == 1
    assert [p.name for p in tmp_path.iterdir()] == [Path(dirs.pop()).name]  # no temp dirs left
    cache = ExportCache(tmp_path, create_model(checkpoint=OFFICIAL_TINY), "sha-race")
    _, hit = cache.get(ModalityConfig((("s2", 2),), patch_size=10))
    assert hit


def _fake_export(directory: Path, size: int, used: float) -> None:
    """The on-disk shape of an export (manifest + artefact bytes), last used at ``used``: enough for pruning."""
    directory.mkdir(parents=True)
    (directory / "model.onnx").write_bytes(b"\0" * size)
    manifest = directory / "manifest.json"
    manifest.write_text(json.dumps({"name": directory.name, "configuration": {}, "checkpoint_sha256": "sha",
                                    "max_abs_error_vs_eager": {}}))
    os.utime(manifest, (used, used))


def test_cache_prune_removes_least_recently_used_exports(tiny, tmp_path) -> None:
    cache = ExportCache(tmp_path, tiny, "sha")
    for name, used in (("a", 100), ("b", 200), ("c", 300), ("d", 400)):
        _fake_export(tmp_path / name, 10_000, used)
    _fake_export(tmp_path / ".a.in-progress", 50_000, 50)  # an export being built: never counted nor removed
    size = sum(f.stat().st_size for f in (tmp_path / "a").iterdir())

    removed = cache.prune(2 * size, keep=tmp_path / "a")  # "a" was just written, though its mtime is oldest
    assert [p.name for p in removed] == ["b", "c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".a.in-progress", "a", "d"]  # nothing half-removed left
    assert [e["name"] for e in list_exports(tmp_path)] == ["a", "d"]
    assert cache.prune(2 * size) == []  # fits already


def test_cache_hit_counts_as_use(tiny, tmp_path) -> None:
    cache = ExportCache(tmp_path, tiny, "sha")
    _fake_export(cache.path(SMALL), 10, used=100)
    export, hit = cache.get(SMALL)
    assert hit and export.directory == cache.path(SMALL)
    assert (cache.path(SMALL) / "manifest.json").stat().st_mtime > time.time() - 60


@pytest.mark.slow
def test_export_removed_between_lookup_and_load_is_built_again(tiny, small_export, tmp_path) -> None:
    """Another worker's prune can land between a lookup and the session load; the load must not fail."""

    class PrunedAfterLookup(ExportCache):
        def get(self, config, precision="fp32"):
            export, hit = super().get(config, precision)
            if hit and not self.pruned:  # what another process's prune does: rename away, then delete
                self.pruned = True
                os.rename(export.directory, self.root / ".removed-by-another-worker")
                shutil.rmtree(self.root / ".removed-by-another-worker")
            return export, hit

    # A limit below one export: writing one prunes everything else, never the export just written.
    cache = PrunedAfterLookup(tmp_path, tiny, file_sha256(OFFICIAL_TINY), max_bytes=1)
    cache.pruned = False
    shutil.copytree(small_export.directory, cache.path(SMALL))
    _fake_export(tmp_path / "older", 10, used=100)
    metrics = WorkerMetrics()
    runner = ModelRunner(tiny, ExportedBackend(cache, "onnx", metrics=metrics))
    data = example_inputs(SMALL, batch=1, dates=5, seed=6)
    request = _request(data, 0, 5)
    [result] = runner.run(SMALL.key(), [request])
    assert cache.pruned and (cache.path(SMALL) / "manifest.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [cache.path(SMALL).name]  # "older" pruned, nothing left over
    assert np.abs(result["embedding"] - _solo(tiny, request)).max() < 2e-5
    assert metrics.export_cache_misses._value.get() == 1 and metrics.export_cache_hits._value.get() == 0


def _request(data: dict[str, torch.Tensor], row: int, dates: int) -> dict[str, np.ndarray]:
    return {"s2": data["s2"][row, :dates].numpy(), "s2_dates": data["s2_dates"][row, :dates].numpy(),
            "s1-asc": data["s1-asc"][row].numpy(), "s1-asc_dates": data["s1-asc_dates"][row].numpy()}


def _solo(model, request: dict[str, np.ndarray]) -> np.ndarray:
    data = {k: torch.from_numpy(v)[None] for k, v in request.items()}
    with torch.no_grad():
        return model(data, patch_size=SMALL.patch_size, output=SMALL.output)[0].numpy()


@pytest.mark.parametrize("kind", ["onnx", "torchscript"])
def test_padded_dates_batch_equals_solo_runs(tiny, cache, small_export, kind) -> None:
    runner = ModelRunner(tiny, ExportedBackend(cache, kind))
    data = example_inputs(SMALL, batch=3, dates=8, seed=3)
    requests = [_request(data, 0, 8), _request(data, 1, 3), _request(data, 2, 6)]
    results = runner.run(SMALL.key(), requests)
    for request, result in zip(requests, results, strict=True):
        assert result["embedding"].shape == (10, 256)
        assert np.abs(result["embedding"] - _solo(tiny, request)).max() < 2e-5


def test_worker_serves_onnx_through_redis(tiny, cache, small_export, redis_url, key_prefix) -> None:
    runner = ModelRunner(tiny, ExportedBackend(cache, "onnx"))
    queue_settings = QueueSettings(prefix=key_prefix)
    worker = Worker(WorkerSettings(redis_url=redis_url, queue_prefix=key_prefix, max_wait_ms=50), runner)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        queue = RedisQueue.from_url(redis_url, queue_settings)
        data = example_inputs(SMALL, batch=4, dates=7, seed=5)
        requests = [_request(data, i, d) for i, d in enumerate((7, 2, 5, 7))]
        ids = [queue.enqueue(SMALL.key(), r, deadline_s=120) for r in requests]
        for request_id, request in zip(ids, requests, strict=True):
            out = queue.wait_result(request_id, timeout_s=120)["embedding"]
            assert np.abs(out - _solo(tiny, request)).max() < 2e-5
        assert worker.metrics.export_cache_hits._value.get() == 1  # exported by the fixture, loaded once
        assert worker.metrics.export_cache_misses._value.get() == 0
    finally:
        worker.stop()
        thread.join(timeout=30)


@pytest.mark.slow
def test_loaded_graphs_are_bounded_and_reloaded_from_disk(tiny, cache, small_export) -> None:
    """Each configuration is a session with its own weights and arena; a worker keeps ``max_graphs`` of
    them, least recently used unloaded first, and one needed again is reloaded from the export cache."""
    other = ModalityConfig((("s2", 4),), patch_size=20)
    other_request = {k: v[0].numpy() for k, v in example_inputs(other, batch=1, dates=5, seed=2).items()
                     if not k.endswith("_date_mask")}
    data = example_inputs(SMALL, batch=2, dates=6, seed=4)
    requests = [_request(data, 0, 6), _request(data, 1, 3)]

    metrics = WorkerMetrics()
    backend = ExportedBackend(cache, "onnx", metrics=metrics, max_graphs=1)
    runner = ModelRunner(tiny, backend)
    first = runner.run(SMALL.key(), requests)
    runner.run(other.key(), [other_request])  # exported now; SMALL unloaded to make room
    assert backend.loaded == [other.key()]
    again = runner.run(SMALL.key(), requests)
    assert backend.loaded == [SMALL.key()]
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a["embedding"], b["embedding"])
    assert metrics.graphs_unloaded._value.get() == 2
    assert metrics.export_cache_hits._value.get() == 2  # SMALL loaded twice from disk, never re-exported
    assert metrics.export_cache_misses._value.get() == 1

    # Use, not load order, decides what goes next: after SMALL, other, SMALL the least recent is other.
    backend = ExportedBackend(cache, "onnx", max_graphs=2)
    runner = ModelRunner(tiny, backend)
    for key in (SMALL.key(), other.key(), SMALL.key()):
        runner.run(key, requests[:1] if key == SMALL.key() else [other_request])
    assert backend.loaded == [other.key(), SMALL.key()]


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("ANYSAT_MAX_GRAPHS", "0", "greater than or equal to 1"), ("ANYSAT_MAX_GRAPHS", "four", "valid integer"),
    ("ANYSAT_EXPORT_CACHE_GB", "0", "greater than 0"), ("ANYSAT_EXPORT_CACHE_GB", "lots", "valid number"),
    ("ANYSAT_EXPORT_CACHE_GB", "inf", "finite number"), ("ANYSAT_RUNTIME", "tensorflow", "'onnx'"),
])
def test_worker_limits_are_checked_before_the_model_loads(name, value, expected, monkeypatch, tmp_path,
                                                          capsys) -> None:
    from service.runtime.worker import main as worker_main

    monkeypatch.setenv("ANYSAT_CHECKPOINT", str(tmp_path / "not-read.safetensors"))
    monkeypatch.setenv("ANYSAT_REDIS_URL", "redis://127.0.0.1:1/0")  # never reached
    monkeypatch.setenv(name, value)
    assert worker_main([]) == 2
    err = capsys.readouterr().err
    assert f"{name} (--{name.removeprefix('ANYSAT_').lower().replace('_', '-')})" in err and expected in err, err
    with pytest.raises(ValueError, match=name.removeprefix("ANYSAT_").lower()):
        runner_from_env()


def test_unloadable_graph_fails_at_once_until_retried(tiny, small_export, tmp_path) -> None:
    """A graph that cannot be built or loaded is a server fault (GraphUnavailable), remembered for
    ``retry_failed_s`` so that every batch does not pay another export attempt; a configuration the model cannot
    take at all stays the requests' fault (ValueError)."""
    cache = ExportCache(tmp_path, tiny, file_sha256(OFFICIAL_TINY))
    cache.path(SMALL).write_text("not an export")  # a file where the export directory belongs: unreadable
    runner = ModelRunner(tiny, ExportedBackend(cache, "onnx"))
    data = example_inputs(SMALL, batch=1, dates=4, seed=8)
    request = _request(data, 0, 4)
    with pytest.raises(GraphUnavailable, match=r"could not build or load .* NotADirectoryError"):
        runner.run(SMALL.key(), [request])

    cache.path(SMALL).unlink()
    shutil.copytree(small_export.directory, cache.path(SMALL))  # repaired, but the failure is remembered
    remembered = rf"NotADirectoryError.*failed \d+ s ago; retried {RETRY_FAILED_S:g} s after"
    with pytest.raises(GraphUnavailable, match=remembered):
        runner.run(SMALL.key(), [request])
    cache.retry_failed_s = 0.0
    [result] = runner.run(SMALL.key(), [request])
    assert np.abs(result["embedding"] - _solo(tiny, request)).max() < 2e-5

    bad = ModalityConfig((("s2", 6), ("s1-asc", 6)), patch_size=40)
    with pytest.raises(ValueError, match="does not divide the tile side"):
        runner.run(bad.key(), [request])


def test_triton_runtime_against_v2_server(tiny, cache, small_export, tmp_path) -> None:
    """The ``triton`` runtime publishes the export's Triton folder, loads it, and infers over the
    KServe v2 binary protocol (``FakeTriton`` stands in for Triton, which cannot run here)."""
    from fake_triton import FakeTriton

    from service.runtime.triton import TritonBackend

    repository = tmp_path / "triton-repo"
    with FakeTriton(repository) as server:
        runner = ModelRunner(tiny, TritonBackend(cache, server.url, repository))
        data = example_inputs(SMALL, batch=2, dates=6, seed=9)
        requests = [_request(data, 0, 6), _request(data, 1, 4)]
        results = runner.run(SMALL.key(), requests)
        runner.run(SMALL.key(), requests[:1])
        assert server.infer_calls == 2  # one batched call each, the model loaded once
    assert (repository / small_export.manifest["name"] / "config.pbtxt").is_file()
    for request, result in zip(requests, results, strict=True):
        assert np.abs(result["embedding"] - _solo(tiny, request)).max() < 2e-5


@pytest.mark.slow
def test_ill_conditioned_output_is_judged_against_fp64(tmp_path) -> None:
    """The demo encoder's dense l8 map at 60 px: eager fp32 itself is ~2e-4 from fp64, so ONNX differs from
    eager by more than 1e-4 while being as exact; the masks of the default service depend on this export."""
    from service.gateway.settings import DEMO_CHECKPOINT

    demo = create_model(checkpoint=DEMO_CHECKPOINT)
    config = ModalityConfig((("l8", 60),), 20, "dense", "l8")
    m = export_configuration(demo, config, tmp_path / "l8", "sha").manifest
    exact = m["max_abs_error_vs_fp64"]
    assert max(m["max_abs_error_vs_eager"].values()) > 1e-4  # refused by a plain 1e-4 bound
    assert exact["onnx"] <= 2 * exact["eager"] and exact["torchscript"] <= 2 * exact["eager"]
