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
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from model import AnySat, create_model
from model.checkpoint import file_sha256
from model.heads import Head, load_head
from model.normalize import standardize
from model.sensors import SENSORS
from service.engine.metrics import WorkerMetrics
from service.engine.payload import STATS_SUFFIX
from service.runtime.configuration import ModalityConfig
from service.runtime.device import CudaOptions, Device, bound_run, check_device, device_providers, onnxruntime
from service.runtime.export import ExportCache
from service.runtime.settings import DEFAULT_MAX_GRAPHS, DEFAULT_MAX_PADDING, RUNTIMES, RuntimeSettings
from service.runtime.triton import TritonBackend

if TYPE_CHECKING:
    import onnxruntime as ort

log = logging.getLogger(__name__)
CPU = Device("cpu")


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


def _input_size(config: ModalityConfig, r: Mapping[str, np.ndarray], dates: Mapping[str, int] | None = None) -> int:
    """Values a request feeds the graph; with ``dates``, its series counted at that many dates (padded)."""
    total = 0
    for name in config.names:
        a = r[name]
        if SENSORS[name].time_series:
            total += int(np.prod(a.shape[1:])) * (dates[name] if dates is not None else a.shape[0])
        else:
            total += a.size
    return total


def padding_groups(config: ModalityConfig, requests: Sequence[Mapping[str, np.ndarray]], max_padding: float
                   ) -> list[list[int]]:
    """The requests (by index) in sub-batches whose padded input is at most ``max_padding`` x their real input.

    A batch pads every series to its longest, so one long series makes every request of the batch pay for its
    dates. Sorted by size, requests are grouped while the padding stays within the ratio. On a CPU a forward costs
    about as much per tile at batch 1 as at 8, so padded dates cost more than batching saves; on a GPU, where a
    larger batch is cheaper per tile, a larger ``max_padding`` keeps batches whole."""
    series = [n for n in config.names if SENSORS[n].time_series]
    if not series or len(requests) < 2 or max_padding == float("inf"):
        return [list(range(len(requests)))]
    groups: list[list[int]] = []
    current: list[int] = []
    for i in sorted(range(len(requests)), key=lambda j: _input_size(config, requests[j])):
        trial = [*current, i]
        longest = {n: max(requests[j][n].shape[0] for j in trial) for n in series}
        padded = sum(_input_size(config, requests[j], longest) for j in trial)
        if current and padded > max_padding * sum(_input_size(config, requests[j]) for j in trial):
            groups.append(current)
            trial = [i]
        current = trial
    groups.append(current)
    return groups


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


def _to(device: Device, x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(x)
    return t if not device.is_cuda else t.pin_memory().to(device.torch, non_blocking=True)


class EagerBackend:
    """PyTorch eager on the loaded model, on ``device``; the reference the exported runtimes are checked against."""

    def __init__(self, model: AnySat, device: Device = CPU) -> None:
        self.device = device
        self.model = model.eval().to(device.torch)

    def forward(self, config: ModalityConfig, batch: dict[str, np.ndarray]) -> np.ndarray:
        data = {k: _to(self.device, v) for k, v in batch.items()}
        with torch.no_grad():
            return self.model(data, patch_size=config.patch_size, output=config.output,
                              output_modality=config.output_modality).cpu().numpy()


class ExportedBackend:
    """Runs each configuration's exported graph — ONNX Runtime or TorchScript — exporting it on
    first use through the shared on-disk ``ExportCache``.

    At most ``max_graphs`` graphs stay loaded, least recently used unloaded first. Every configuration (tile
    size, patch size, output) is its own graph with its own weights and memory arena, so a worker that meets
    many would otherwise grow until the machine kills it. An unloaded graph that is needed again is reloaded
    from the disk cache (an ``anysat_export_cache_hits_total``), not re-exported.

    ``device`` picks the ONNX Runtime providers (``service.runtime.device.providers``) or where TorchScript runs;
    ``precision`` which ONNX graph loads (fp16: exported beside fp32 on first use); ``io_binding`` (default: on for
    cuda) runs ONNX graphs through ``bound_run``."""

    def __init__(self, cache: ExportCache, kind: str = "onnx", providers: Sequence[str] | None = None,
                 metrics: WorkerMetrics | None = None, max_graphs: int = DEFAULT_MAX_GRAPHS, device: Device = CPU,
                 cuda_options: CudaOptions | None = None, precision: str = "fp32",
                 io_binding: bool | None = None) -> None:
        if kind not in ("onnx", "torchscript"):
            raise ValueError(f"runtime must be onnx or torchscript, got {kind!r}")
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be at least 1, got {max_graphs}")
        if precision != "fp32" and kind != "onnx":
            raise ValueError(f"precision {precision}: only runtime onnx has reduced-precision graphs")
        self.cache, self.kind, self.metrics, self.max_graphs = cache, kind, metrics, max_graphs
        self.device, self.precision = device, precision
        self.io_binding = device.is_cuda if io_binding is None else io_binding
        self.provider_options: list[tuple[str, dict[str, str]]] = (
            [(p, {}) for p in providers] if providers else
            device_providers(device, cuda_options) if kind == "onnx" else [])
        self.providers = [name for name, _ in self.provider_options]
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
                config, lambda export: self._load(export.directory, [i["name"] for i in export.manifest["inputs"]]),
                self.precision)
            if self.metrics is not None:
                (self.metrics.export_cache_hits if hit else self.metrics.export_cache_misses).inc()
                self.metrics.graphs_loaded.set(len(self._graphs))
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
            self.metrics.graphs_loaded.set(len(self._graphs))
        _return_freed_memory()

    def _load(self, directory: Path, names: list[str]
              ) -> tuple[list[str], Callable[[dict[str, np.ndarray]], np.ndarray]]:
        if self.kind == "onnx":
            session = onnxruntime().InferenceSession(
                str(directory / "model.onnx"), session_options(), providers=self.providers,
                provider_options=[opts for _, opts in self.provider_options])
            if self.io_binding:
                return names, bound_run(session, names, self.device)
            return names, lambda feed: session.run(None, feed)[0]
        module = torch.jit.load(str(directory / "model.ts"), map_location=self.device.torch)

        def run(feed: dict[str, np.ndarray]) -> np.ndarray:
            with torch.no_grad():
                return module(*[_to(self.device, feed[n]) for n in names]).cpu().numpy()

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
    opts = onnxruntime().SessionOptions()
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.force_spinning_stop", "1")
    opts.enable_mem_pattern = False
    return opts


def default_providers() -> list[str]:
    """CUDA when this onnxruntime build and machine have it, CPU always as the fallback (benchmarks; workers take
    their providers from ``ANYSAT_DEVICE`` instead, and never fall back silently)."""
    available = onnxruntime().get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class ModelRunner:
    """``service.engine.batching.Runner`` over one encoder checkpoint and a directory of heads."""

    def __init__(self, model: AnySat, backend: Backend | None = None, heads_dir: str | Path | None = None,
                 device: Device | None = None) -> None:
        self.model = model.eval()
        # Heads run where the backend's output is: the eager backend's device, else the given one (CPU by default).
        self.device: Device = device or getattr(backend, "device", None) or CPU
        self.backend = backend or EagerBackend(self.model, self.device)
        self.heads_dir = Path(heads_dir) if heads_dir else None
        self._heads: dict[str, Head] = {}
        # A batch is split where padding its series to the longest would add more than this (padding_groups).
        self.max_padding = DEFAULT_MAX_PADDING
        # What anysat_worker_build_info reports; from_checkpoint knows them.
        self.checkpoint_sha256, self.runtime = "unknown", "eager" if isinstance(self.backend, EagerBackend) else ""

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, heads_dir: str | Path | None = None, runtime: str = "eager",
                        export_dir: str | Path | None = None, triton_url: str | None = None,
                        triton_repository: str | Path | None = None, max_graphs: int = DEFAULT_MAX_GRAPHS,
                        cache_max_bytes: int | None = None, device: Device = CPU,
                        cuda_options: CudaOptions | None = None, precision: str = "fp32",
                        io_binding: bool | None = None, max_padding: float = DEFAULT_MAX_PADDING) -> ModelRunner:
        """``runtime``: ``eager`` (PyTorch), ``onnx`` (ONNX Runtime, on ``device``), ``torchscript``
        or ``triton`` (a Triton server at ``triton_url`` loading from ``triton_repository``); all but
        eager export each configuration on first use into ``export_dir``. ``onnx`` and ``torchscript``
        keep at most ``max_graphs`` configurations loaded (Triton manages its own); the export cache is pruned to
        ``cache_max_bytes`` (None: unbounded). ``device``, ``cuda_options``, ``precision`` and ``io_binding``: see
        ``ExportedBackend``; eager and TorchScript modules and the heads are moved to ``device``."""
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
        model = create_model(checkpoint=checkpoint)
        sha256 = file_sha256(checkpoint)
        if runtime == "eager":
            runner = cls(model, heads_dir=heads_dir, device=device)
        elif export_dir is None:
            raise ValueError(f"runtime {runtime!r} needs an export directory (ANYSAT_EXPORT_DIR)")
        else:
            cache = ExportCache(export_dir, model, sha256, max_bytes=cache_max_bytes)
            if runtime == "triton":
                if not (triton_url and triton_repository):
                    raise ValueError("runtime 'triton' needs ANYSAT_TRITON_URL and ANYSAT_TRITON_REPOSITORY")
                runner = cls(model, TritonBackend(cache, triton_url, triton_repository), heads_dir=heads_dir)
            else:
                backend = ExportedBackend(cache, runtime, max_graphs=max_graphs, device=device,
                                          cuda_options=cuda_options, precision=precision, io_binding=io_binding)
                runner = cls(model, backend, heads_dir=heads_dir, device=device)
        runner.checkpoint_sha256, runner.runtime = sha256, runtime
        runner.max_padding = max_padding
        return runner

    def attach_metrics(self, metrics: WorkerMetrics) -> None:
        """Called by the worker so export-cache hits and misses land in its metrics, and what it serves."""
        if isinstance(self.backend, ExportedBackend | TritonBackend):
            self.backend.metrics = metrics
        metrics.set_build_info(self.checkpoint_sha256, self.runtime or type(self.backend).__name__)

    def head(self, name: str) -> Head:
        if name not in self._heads:
            if self.heads_dir is None:
                raise ValueError(f"head {name!r}: this worker has no heads directory")
            path = self.heads_dir / f"{name}.safetensors"
            if not path.is_file():
                raise ValueError(f"head {name!r}: no {path.name} in the heads directory")
            self._heads[name] = load_head(path).to(self.device.torch)
        return self._heads[name]

    def run(self, batch_key: str, requests: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        config = ModalityConfig.from_key(batch_key)
        groups = padding_groups(config, requests, self.max_padding)
        if len(groups) == 1:
            return self._run(config, requests)
        out: list[dict[str, np.ndarray]] = [{} for _ in requests]
        for group in groups:
            for i, result in zip(group, self._run(config, [requests[i] for i in group]), strict=True):
                out[i] = result
        return out

    def _run(self, config: ModalityConfig, requests: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
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
            logits = head(_to(self.device, features)).cpu().numpy()
        return [{"logits": row} for row in logits]


def runner_from_settings(settings: RuntimeSettings) -> ModelRunner:
    """The AnySat model runner a worker process serves: ``anysat worker``'s default runner."""
    # The device first: a worker told to use a GPU it cannot use stops here, before minutes of model loading.
    check_device(settings.target, settings.runtime, settings.cuda_options())
    if settings.checkpoint is None:
        raise ValueError("ANYSAT_CHECKPOINT (--checkpoint) is not set: the worker needs an encoder checkpoint")
    return ModelRunner.from_checkpoint(settings.checkpoint, heads_dir=settings.heads_dir, runtime=settings.runtime,
                                       export_dir=settings.export_dir, triton_url=settings.triton_url,
                                       triton_repository=settings.triton_repository, max_graphs=settings.max_graphs,
                                       cache_max_bytes=int(settings.export_cache_gb * 1e9), device=settings.target,
                                       cuda_options=settings.cuda_options(), precision=settings.precision,
                                       io_binding=settings.io_binding, max_padding=settings.max_padding)


def runner_from_env() -> ModelRunner:
    """``--runner service.runtime.runner:runner_from_env``: the model runner configured by ``ANYSAT_*`` alone."""
    return runner_from_settings(RuntimeSettings())
