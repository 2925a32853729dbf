"""The model runtime behind the workers: turns a batch of requests of one configuration into one
forward pass and back into per-request results.

Request tensors (no batch axis): ``<m>`` float32 normalised ``[C, H, W]`` or ``[T, C, H, W]``, and
``<m>_dates`` int64 ``[T]`` (day of year, 1 January = 1) for each series. Requests of one batch may
have different date counts: series are padded to the longest and the padding masked out
(``<m>_date_mask``), which leaves every result equal to a solo run. A series may carry ``<m>_mask``
(bool ``[T, 1|C, H, W]``, True = a real value; the input's nodata): eager passes it to the model, which
replaces masked values by the sensor's learned missing-value scalar; exported graphs take no mask, so that
replacement is done on their inputs instead (``fill_masked``) — the same values reach the same layers.
Results: ``{"embedding": array}`` (the output kind's shape without the batch axis) or, when the
configuration names a head, ``{"logits": [K] or [K, H, W]}`` — a configuration with a head uses the
head's output kind: ``tile`` for classification, ``dense`` of the head's modality for segmentation.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import sys
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort
import torch

from model import AnySat, create_model
from model.checkpoint import file_sha256
from model.heads import Head, load_head
from model.normalize import standardize
from model.sensors import SENSORS
from service.engine.metrics import WorkerMetrics
from service.engine.payload import STATS_SUFFIX
from service.runtime.configuration import ModalityConfig
from service.runtime.export import ExportCache
from service.runtime.settings import DEFAULT_MAX_GRAPHS, RUNTIMES, RuntimeSettings
from service.runtime.triton import TritonBackend

log = logging.getLogger(__name__)


def stack_requests(config: ModalityConfig, requests: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Batch the requests in graph-input order as float32, normalising each sensor that carries its
    ``<sensor>_stats`` and padding series to the longest with masked dates."""
    batch: dict[str, np.ndarray] = {}
    for name in config.names:
        arrays = [r[name] for r in requests]
        series = SENSORS[name].time_series
        t_max = max(a.shape[0] for a in arrays) if series else 0
        x = np.zeros((len(arrays), t_max, *arrays[0].shape[1:]) if series else (len(arrays), *arrays[0].shape),
                     np.float32)
        for i, (r, a) in enumerate(zip(requests, arrays, strict=True)):
            _model_values(name, a, r.get(f"{name}{STATS_SUFFIX}"), out=x[i, : len(a)] if series else x[i])
        batch[name] = x
        if not series:
            continue
        dates = [np.asarray(r[f"{name}_dates"], dtype=np.int64) for r in requests]
        d = np.zeros((len(arrays), t_max), np.int64)
        mask = np.zeros((len(arrays), t_max), np.bool_)
        for i, (a, t) in enumerate(zip(arrays, dates, strict=True)):
            d[i, : len(t)], mask[i, : len(a)] = t, True
        batch[f"{name}_dates"], batch[f"{name}_date_mask"] = d, mask
        value_mask = _stack_value_masks(name, requests, x.shape)
        if value_mask is not None:
            batch[f"{name}_mask"] = value_mask
    return batch


def _stack_value_masks(name: str, requests: Sequence[Mapping[str, np.ndarray]], shape: tuple[int, ...]
                       ) -> np.ndarray | None:
    """``<name>_mask`` of the batch ``[B, T, 1|C, H, W]`` (1 on the band axis unless a request masks bands
    apart), or None when no request has one. Requests without a mask, and padded dates (already out of the
    model's sight through ``<name>_date_mask``), are all valid."""
    masks = [r.get(f"{name}_mask") for r in requests]
    if all(m is None for m in masks):
        return None
    b, _, c, h, w = shape
    bands = c if any(m is not None and m.shape[1] != 1 for m in masks) else 1
    out = np.ones((b, shape[1], bands, h, w), np.bool_)
    for i, m in enumerate(masks):
        if m is None:
            continue
        if m.ndim != 4 or m.shape[0] > shape[1] or m.shape[1] not in (1, c) or m.shape[2:] != (h, w):
            raise ValueError(f"{name}_mask: shape {list(m.shape)} does not fit this batch's {list(shape[1:])}")
        out[i, : m.shape[0]] = m
    return out


def fill_masked(batch: dict[str, np.ndarray], model: AnySat) -> dict[str, np.ndarray]:
    """``batch`` for a graph that takes no ``<m>_mask``: each masked value set to the sensor's learned
    missing-value scalar (what the model's tokenizer does with the mask), the masks dropped. In place."""
    for key in [k for k in batch if k.endswith("_mask") and not k.endswith("_date_mask")]:
        name, valid = key.removesuffix("_mask"), batch.pop(key)
        pad = model.missing_value(name)
        if pad is not None:  # else the graph refuses the sensor on its own
            np.copyto(batch[name], np.float32(pad), where=~valid)
    return batch


def _model_values(name: str, x: np.ndarray, stats: np.ndarray | None, out: np.ndarray) -> None:
    """Write one request's ``name`` into its batch row as the model takes it: float32, normalised if asked."""
    if x.shape != out.shape:
        raise ValueError(f"{name}: shape {list(x.shape)} does not fit this batch's {list(out.shape)}")
    if stats is None:
        np.copyto(out, x, casting="unsafe")
        return
    if stats.shape != (2, x.shape[-3]):
        raise ValueError(f"{name}{STATS_SUFFIX}: expected [2, {x.shape[-3]}] (means, stds), got {list(stats.shape)}")
    standardize(x, stats[0], stats[1], out=out)


class Backend(Protocol):
    """One way to run a configuration's graph on a stacked batch (eager, ONNX Runtime, ...)."""

    def forward(self, config: ModalityConfig, batch: dict[str, np.ndarray]) -> np.ndarray: ...


class EagerBackend:
    """PyTorch eager on the loaded model; the reference the exported runtimes are checked against."""

    def __init__(self, model: AnySat) -> None:
        self.model = model.eval()

    def forward(self, config: ModalityConfig, batch: dict[str, np.ndarray]) -> np.ndarray:
        data = {k: torch.from_numpy(v) for k, v in batch.items()}
        with torch.no_grad():
            return self.model(data, patch_size=config.patch_size, output=config.output,
                              output_modality=config.output_modality).numpy()


class ExportedBackend:
    """Runs each configuration's exported graph — ONNX Runtime or TorchScript — exporting it on
    first use through the shared on-disk ``ExportCache``.

    At most ``max_graphs`` graphs stay loaded, least recently used unloaded first. Every configuration (tile
    size, patch size, output) is its own graph with its own weights and memory arena, so a worker that meets
    many would otherwise grow until the machine kills it. An unloaded graph that is needed again is reloaded
    from the disk cache (an ``anysat_export_cache_hits_total``), not re-exported."""

    def __init__(self, cache: ExportCache, kind: str = "onnx", providers: Sequence[str] | None = None,
                 metrics: WorkerMetrics | None = None, max_graphs: int = DEFAULT_MAX_GRAPHS) -> None:
        if kind not in ("onnx", "torchscript"):
            raise ValueError(f"runtime must be onnx or torchscript, got {kind!r}")
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be at least 1, got {max_graphs}")
        self.cache, self.kind, self.metrics, self.max_graphs = cache, kind, metrics, max_graphs
        self.providers = list(providers or default_providers())
        self._graphs: OrderedDict[str, tuple[list[str], Callable[[dict[str, np.ndarray]], np.ndarray]]] = (
            OrderedDict())

    @property
    def loaded(self) -> list[str]:
        """Batch keys of the graphs in memory, least recently used first."""
        return list(self._graphs)

    def forward(self, config: ModalityConfig, batch: dict[str, np.ndarray]) -> np.ndarray:
        key = config.key()
        if key in self._graphs:
            self._graphs.move_to_end(key)
        else:
            self._unload(len(self._graphs) - self.max_graphs + 1)  # before loading: peak memory is max_graphs
            self._graphs[key], hit = self.cache.open(
                config, lambda export: self._load(export.directory, [i["name"] for i in export.manifest["inputs"]]))
            if self.metrics is not None:
                (self.metrics.export_cache_hits if hit else self.metrics.export_cache_misses).inc()
        names, run = self._graphs[key]
        return run({n: batch[n] for n in names})

    def _unload(self, count: int) -> None:
        if count <= 0:
            return
        for _ in range(count):
            key = next(iter(self._graphs))
            del self._graphs[key]  # the last reference: the session and its arena go with it
            log.info("unloaded graph %s (max_graphs %d)", key, self.max_graphs)
        if self.metrics is not None:
            self.metrics.graphs_unloaded.inc(count)
        _return_freed_memory()

    def _load(self, directory: Path, names: list[str]
              ) -> tuple[list[str], Callable[[dict[str, np.ndarray]], np.ndarray]]:
        if self.kind == "onnx":
            session = ort.InferenceSession(str(directory / "model.onnx"), session_options(), providers=self.providers)
            return names, lambda feed: session.run(None, feed)[0]
        module = torch.jit.load(str(directory / "model.ts"))

        def run(feed: dict[str, np.ndarray]) -> np.ndarray:
            with torch.no_grad():
                return module(*[torch.from_numpy(feed[n]) for n in names]).numpy()

        return names, run


def _return_freed_memory() -> None:
    """Hand the heap that unloaded graphs freed back to the system.

    glibc keeps freed memory mapped for reuse; measured on eight tiny-model sessions at batch 8, dropping them
    all gave back 740 of their 1,200 MB without this and 1,100 MB with it. Other C libraries: nothing to do."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def session_options(threads: int = 0) -> ort.SessionOptions:
    """ONNX Runtime settings for serving: ``threads`` intra-op threads (0: one per core), spinning while a
    forward runs and stopped as soon as it returns, and no memory pattern.

    By default ORT's threads spin on after ``run()`` returns, waiting for more work; in a worker that work is
    a Redis round trip away, and the spinning takes the cores that Redis, the caller and the reply need.
    ``python -m benchmarks.serving`` times a raw forward both ways.

    The memory pattern plans each input shape's activations as one block, allocated beside the arena the
    first run of that shape filled: a session's memory grows by about half again on its second run. Without it,
    forwards take as long (1.00-1.02 x) and a worker holding six tiny-model graphs stays at 1.4 GB instead of
    2.3 GB (``python -m benchmarks.graphs`` measures both)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.force_spinning_stop", "1")
    opts.enable_mem_pattern = False
    return opts


def default_providers() -> list[str]:
    """CUDA when this onnxruntime build and machine have it, CPU always as the fallback."""
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class ModelRunner:
    """``service.engine.batching.Runner`` over one encoder checkpoint and a directory of heads."""

    def __init__(self, model: AnySat, backend: Backend | None = None, heads_dir: str | Path | None = None) -> None:
        self.model = model.eval()
        self.backend = backend or EagerBackend(self.model)
        self.heads_dir = Path(heads_dir) if heads_dir else None
        self._heads: dict[str, Head] = {}

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, heads_dir: str | Path | None = None, runtime: str = "eager",
                        export_dir: str | Path | None = None, triton_url: str | None = None,
                        triton_repository: str | Path | None = None, max_graphs: int = DEFAULT_MAX_GRAPHS,
                        cache_max_bytes: int | None = None) -> ModelRunner:
        """``runtime``: ``eager`` (PyTorch), ``onnx`` (ONNX Runtime, CUDA if present), ``torchscript``
        or ``triton`` (a Triton server at ``triton_url`` loading from ``triton_repository``); all but
        eager export each configuration on first use into ``export_dir``. ``onnx`` and ``torchscript``
        keep at most ``max_graphs`` configurations loaded (Triton manages its own); the export cache is pruned to
        ``cache_max_bytes`` (None: unbounded)."""
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
        model = create_model(checkpoint=checkpoint)
        if runtime == "eager":
            return cls(model, heads_dir=heads_dir)
        if export_dir is None:
            raise ValueError(f"runtime {runtime!r} needs an export directory (ANYSAT_EXPORT_DIR)")
        cache = ExportCache(export_dir, model, file_sha256(checkpoint), max_bytes=cache_max_bytes)
        if runtime == "triton":
            if not (triton_url and triton_repository):
                raise ValueError("runtime 'triton' needs ANYSAT_TRITON_URL and ANYSAT_TRITON_REPOSITORY")
            return cls(model, TritonBackend(cache, triton_url, triton_repository), heads_dir=heads_dir)
        return cls(model, ExportedBackend(cache, runtime, max_graphs=max_graphs), heads_dir=heads_dir)

    def attach_metrics(self, metrics: WorkerMetrics) -> None:
        """Called by the worker so export-cache hits and misses land in its metrics."""
        if isinstance(self.backend, ExportedBackend | TritonBackend):
            self.backend.metrics = metrics

    def head(self, name: str) -> Head:
        if name not in self._heads:
            if self.heads_dir is None:
                raise ValueError(f"head {name!r}: this worker has no heads directory")
            path = self.heads_dir / f"{name}.safetensors"
            if not path.is_file():
                raise ValueError(f"head {name!r}: no {path.name} in the heads directory")
            self._heads[name] = load_head(path)
        return self._heads[name]

    def run(self, batch_key: str, requests: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        config = ModalityConfig.from_key(batch_key)
        batch = stack_requests(config, requests)
        # The head runs here, after the graph: backends see the encoder configuration without it, so a
        # head shares the encoder export of its modality configuration (the batch key still has it).
        if not isinstance(self.backend, EagerBackend):
            batch = fill_masked(batch, self.model)
        features = self.backend.forward(dataclasses.replace(config, head=None), batch)
        if config.head is None:
            return [{"embedding": row} for row in features]
        head = self.head(config.head)
        with torch.no_grad():
            logits = head(torch.from_numpy(features)).numpy()
        return [{"logits": row} for row in logits]


def runner_from_settings(settings: RuntimeSettings) -> ModelRunner:
    """The AnySat model runner a worker process serves: ``anysat worker``'s default runner."""
    if settings.checkpoint is None:
        raise ValueError("ANYSAT_CHECKPOINT (--checkpoint) is not set: the worker needs an encoder checkpoint")
    return ModelRunner.from_checkpoint(settings.checkpoint, heads_dir=settings.heads_dir, runtime=settings.runtime,
                                       export_dir=settings.export_dir, triton_url=settings.triton_url,
                                       triton_repository=settings.triton_repository, max_graphs=settings.max_graphs,
                                       cache_max_bytes=int(settings.export_cache_gb * 1e9))


def runner_from_env() -> ModelRunner:
    """``--runner service.runtime.runner:runner_from_env``: the model runner configured by ``ANYSAT_*`` alone."""
    return runner_from_settings(RuntimeSettings())
