"""The ``triton`` runtime: batches go to a Triton Inference Server hosting the exported repository.

Each configuration is exported once (``ExportCache``); its ``triton/<name>`` folder is copied into
Triton's model repository (a directory both can see, e.g. a shared volume) and loaded through the
repository API, which needs Triton started with ``--model-control-mode=explicit``. Tensors travel
with the binary tensor extension of the KServe v2 protocol.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from service.engine.metrics import WorkerMetrics
from service.runtime.configuration import ModalityConfig
from service.runtime.export import ExportCache, ExportResult


class TritonBackend:
    def __init__(self, cache: ExportCache, url: str, repository: str | Path,
                 metrics: WorkerMetrics | None = None, timeout_s: float = 120.0) -> None:
        import tritonclient.http as httpclient  # optional dependency: only this runtime needs it

        self._http = httpclient
        self.client = httpclient.InferenceServerClient(url, connection_timeout=timeout_s, network_timeout=timeout_s)
        self.cache, self.repository, self.metrics = cache, Path(repository), metrics
        self._models: dict[str, tuple[str, list[str], str]] = {}  # key -> (name, inputs, output)

    def forward(self, config: ModalityConfig, batch: dict[str, np.ndarray]) -> np.ndarray:
        name, inputs, output = self._model(config)
        request = []
        for n in inputs:
            arr = np.ascontiguousarray(batch[n])
            tensor = self._http.InferInput(n, list(arr.shape), self._triton_dtype(arr.dtype))
            tensor.set_data_from_numpy(arr, binary_data=True)
            request.append(tensor)
        result = self.client.infer(name, request, outputs=[self._http.InferRequestedOutput(output, binary_data=True)])
        return result.as_numpy(output)

    def _model(self, config: ModalityConfig) -> tuple[str, list[str], str]:
        key = config.key()
        if key not in self._models:
            self._models[key], hit = self.cache.open(config, self._load)
            if self.metrics is not None:
                (self.metrics.export_cache_hits if hit else self.metrics.export_cache_misses).inc()
        return self._models[key]

    def _load(self, export: ExportResult) -> tuple[str, list[str], str]:
        m = export.manifest
        self._publish(export.directory / "triton" / m["name"])
        self.client.load_model(m["name"])
        return m["name"], [i["name"] for i in m["inputs"]], m["outputs"][0]["name"]

    def _publish(self, source: Path) -> None:
        """Copy a model folder into Triton's repository atomically (Triton may be scanning it)."""
        target = self.repository / source.name
        if target.exists():
            return
        self.repository.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{source.name}.", dir=self.repository))
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        try:
            tmp.rename(target)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # another worker published it first

    @staticmethod
    def _triton_dtype(dtype: np.dtype) -> str:
        from tritonclient.utils import np_to_triton_dtype

        return np_to_triton_dtype(dtype)
