"""Worker memory as configurations accumulate: every graph kept loaded against at most ``--max-graphs``.

    python -m benchmarks.graphs                  # tiny model, 6 configurations, batch 8, bound 2
    python -m benchmarks.graphs --size base --configs 4 --batch 2

Each configuration (tile size, patch size, output) is its own exported graph with its own weights and memory
arena. The configurations (aerial + Sentinel-2 tiles of 100-300 px at patch 10 m or 20 m) are exported once into a
shared cache, then three fresh processes, one after the other, run the same sequence of batches: every graph kept in
sessions with ORT's default memory pattern; every graph kept in the worker's sessions (``ExportedBackend``, pattern
off); and ``ExportedBackend`` with ``--max-graphs``. Each configuration once (resident memory after each), then the
whole sequence again (the bounded one reloads every graph from disk, which is what a worker pays when its traffic
cycles through more configurations than it keeps). Last, the speed the memory pattern buys: two sessions of the
largest graph, with and without it, run alternately in this process.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from benchmarks.proc import status_mb
from model import create_model, save_checkpoint
from model.checkpoint import file_sha256
from service.engine.metrics import WorkerMetrics
from service.runtime.configuration import ModalityConfig
from service.runtime.export import ExportCache
from service.runtime.runner import ExportedBackend, session_options, stack_requests

# The aerial tile covers what the Sentinel-2 one does: 50 aerial px (0.2 m) per Sentinel-2 px (10 m).
SHAPES = [(3, 10), (4, 10), (5, 10), (6, 10), (4, 20), (6, 20), (2, 10), (2, 20)]


def configurations(n: int) -> list[ModalityConfig]:
    return [ModalityConfig((("aerial", 50 * k), ("s2", k)), patch_size=p) for k, p in SHAPES[:n]]


def _batch(config: ModalityConfig, size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    (_, aerial), (_, s2) = config.modalities
    request = {"aerial": rng.standard_normal((4, aerial, aerial), dtype=np.float32),
               "s2": rng.standard_normal((30, 10, s2, s2), dtype=np.float32), "s2_dates": np.arange(1, 31)}
    return stack_requests(config, [request] * size)


class _PatternBackend:
    """Every graph kept, in sessions with ORT's default memory pattern (the worker turns it off)."""

    def __init__(self, cache: ExportCache) -> None:
        self.cache, self.sessions = cache, {}

    def forward(self, config: ModalityConfig, batch: dict[str, np.ndarray]) -> np.ndarray:
        if config.key() not in self.sessions:
            opts = session_options()
            opts.enable_mem_pattern = True
            self.sessions[config.key()] = ort.InferenceSession(str(self.cache.get(config)[0].directory / "model.onnx"),
                                                               opts, providers=["CPUExecutionProvider"])
        session = self.sessions[config.key()]
        return session.run(None, {i.name: batch[i.name] for i in session.get_inputs()})[0]


def _run(cache_dir: str, ckpt: str, n: int, batch: int, max_graphs: int | None, out: mp.Queue) -> None:
    """``max_graphs`` None: ``_PatternBackend``."""
    torch.set_num_threads(1)  # the model object is only the cache's key source here; ORT does the work
    cache = ExportCache(cache_dir, create_model(checkpoint=ckpt), file_sha256(ckpt))
    metrics = WorkerMetrics()
    backend = (_PatternBackend(cache) if max_graphs is None
               else ExportedBackend(cache, "onnx", metrics=metrics, max_graphs=max_graphs))
    rng = np.random.default_rng(0)
    configs = configurations(n)
    batches = [_batch(c, batch, rng) for c in configs]
    base = status_mb("VmRSS")
    rss, first, second = [], [], []
    for config, b in zip(configs, batches, strict=True):
        started = time.perf_counter()
        backend.forward(config, b)
        first.append(time.perf_counter() - started)
        rss.append(status_mb("VmRSS"))
    for config, b in zip(configs, batches, strict=True):
        started = time.perf_counter()
        backend.forward(config, b)
        second.append(time.perf_counter() - started)
    out.put({"base": base, "rss": rss, "first": first, "second": second, "final": status_mb("VmRSS"),
             "peak": status_mb("VmHWM"), "unloaded": metrics.graphs_unloaded._value.get()})


def pattern_speed(cache: ExportCache, config: ModalityConfig, sizes: tuple[int, ...], pairs: int = 12
                  ) -> dict[int, float]:
    """Per batch size, the median over alternating runs of (forward without / with the memory pattern): two
    sessions of one graph in this process, so the machine's drift falls on both alike."""
    sessions = []
    for pattern in (False, True):
        opts = session_options()
        opts.enable_mem_pattern = pattern
        sessions.append(ort.InferenceSession(str(cache.get(config)[0].directory / "model.onnx"), opts,
                                             providers=["CPUExecutionProvider"]))
    rng = np.random.default_rng(1)
    ratios = {}
    for size in sizes:
        batch = _batch(config, size, rng)
        feed = {i.name: batch[i.name] for i in sessions[0].get_inputs()}
        times: list[list[float]] = [[], []]
        for _ in range(pairs + 2):  # the first two pairs warm both sessions up (the pattern is planned then)
            for i, session in enumerate(sessions):
                started = time.perf_counter()
                session.run(None, feed)
                times[i].append(time.perf_counter() - started)
        ratios[size] = statistics.median(off / on for off, on in zip(times[0][2:], times[1][2:], strict=True))
    return ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.graphs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--configs", type=int, default=6, choices=range(2, len(SHAPES) + 1), metavar="N")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-graphs", type=int, default=2)
    args = parser.parse_args(argv)
    if not 1 <= args.max_graphs < args.configs:
        parser.error("--max-graphs must be at least 1 and below --configs, or nothing is unloaded")

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        torch.manual_seed(0)
        ckpt = save_checkpoint(create_model(args.size), tmp / f"{args.size}.safetensors")
        cache = ExportCache(tmp / "exports", create_model(checkpoint=ckpt), file_sha256(ckpt))
        configs = configurations(args.configs)
        export_s = []
        for i, config in enumerate(configs, 1):
            print(f"# exporting configuration {i}/{len(configs)} ({args.size}) ...", flush=True)
            started = time.perf_counter()
            cache.get(config)
            export_s.append(time.perf_counter() - started)

        ctx = mp.get_context("spawn")
        results = {}
        for bound in (None, args.configs, args.max_graphs):
            out = ctx.Queue()
            proc = ctx.Process(target=_run, args=(str(tmp / "exports"), str(ckpt), args.configs, args.batch, bound,
                                                  out))
            proc.start()
            results[bound] = out.get(timeout=3600)
            proc.join()
        speed = pattern_speed(cache, configs[-1], (1, args.batch))

    runs = [results[None], results[args.configs], results[args.max_graphs]]
    print(f"\n## Worker memory, {args.size} model, {args.configs} configurations, batch {args.batch}\n")
    print("| configurations seen | RSS (MB), all loaded, ORT memory pattern on (ORT's default) | all loaded, "
          f"worker's sessions (pattern off) | worker's sessions, max_graphs {args.max_graphs} |")
    print("|---|---|---|---|")

    def row(label: str, values: list[float], fmt: str = ".0f") -> None:
        print(f"| {label} | " + " | ".join(format(v, fmt) for v in values) + " |")

    row("0 (model object only)", [r["base"] for r in runs])
    for i, c in enumerate(configs):
        name = " + ".join(f"{m} {side}" for m, side in c.modalities) + f" px, patch {c.patch_size} m"
        row(f"{i + 1} ({name})", [r["rss"][i] for r in runs])
    row("after a second pass", [r["final"] for r in runs])
    row("peak (VmHWM)", [r["peak"] for r in runs])
    row("graphs unloaded", [r["unloaded"] for r in runs])
    row("per batch, median s: first pass (load + run)", [statistics.median(r["first"]) for r in runs], ".2f")
    row("… second pass (run, or reload + run)", [statistics.median(r["second"]) for r in runs], ".2f")
    config = " + ".join(f"{m} {side}" for m, side in configs[-1].modalities) + f" px, patch {configs[-1].patch_size} m"
    print(f"\nforward without / with the memory pattern ({config}; median over 12 alternating pairs): "
          + ", ".join(f"batch {size} {ratio:.3f}" for size, ratio in speed.items()))
    print(f"\nexport per configuration (paid once per checkpoint and configuration, then cached on disk): "
          f"median {statistics.median(export_s):.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
