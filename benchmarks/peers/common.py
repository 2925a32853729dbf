"""What both peers share: the model side a user of LitServe or Ray Serve would write around our exported graphs.

numpy + onnxruntime only (no torch, no ``model``, no ``service``), as in a peer's own process: the harness hands the
peer a spec (JSON) naming each configuration's ``model.onnx``, its sensors, which are series, and the per-band
statistics. The request is JSON: ``{"config": i, "inputs": {name: base64 .npy}}`` with each sensor's raw values in
its own dtype and each series' ``<name>_dates``; the server normalises, pads the series to the longest of the
batch (masked dates), runs the configuration's session and answers ``{"embedding": base64 .npy}``. A batch that
mixes configurations is split by configuration, one forward per configuration (a graph per configuration).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort


def session_options() -> ort.SessionOptions:
    """The worker's ONNX Runtime options (``service.runtime.runner.session_options()``, which a test holds this
    equal to): one intra-op thread per core, spinning stopped after each run, no memory pattern."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 0
    opts.add_session_config_entry("session.force_spinning_stop", "1")
    opts.enable_mem_pattern = False
    return opts


def to_b64_npy(array: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode()


def from_b64_npy(text: str) -> np.ndarray:
    return np.load(io.BytesIO(base64.b64decode(text)), allow_pickle=False)


def encode_request(config: int, arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The JSON body a peer's user sends: the configuration's index and every array as base64 .npy."""
    return {"config": config, "inputs": {k: to_b64_npy(v) for k, v in arrays.items()}}


def decode_request(body: Mapping[str, Any]) -> tuple[int, dict[str, np.ndarray]]:
    return int(body["config"]), {k: from_b64_npy(v) for k, v in body["inputs"].items()}


@dataclass(frozen=True)
class SensorSpec:
    name: str
    series: bool
    mean: np.ndarray  # float32 [C]
    std: np.ndarray


@dataclass(frozen=True)
class ConfigSpec:
    onnx: str
    sensors: tuple[SensorSpec, ...]


def write_spec(path: Path, configs: Sequence[Mapping[str, Any]]) -> None:
    """``configs``: ``{"onnx": path, "sensors": [{"name", "series", "mean": [...], "std": [...]}]}`` each."""
    path.write_text(json.dumps({"configs": list(configs)}, indent=1))


def read_spec(path: str | Path) -> list[ConfigSpec]:
    raw = json.loads(Path(path).read_text())["configs"]
    return [ConfigSpec(c["onnx"], tuple(SensorSpec(s["name"], bool(s["series"]),
                                                   np.asarray(s["mean"], np.float32)[:, None, None],
                                                   np.asarray(s["std"], np.float32)[:, None, None])
                                        for s in c["sensors"])) for c in raw]


def stack(config: ConfigSpec, inputs: Sequence[str], requests: Sequence[Mapping[str, np.ndarray]]
          ) -> dict[str, np.ndarray]:
    """The graph's ``inputs``, float32 normalised; series padded to the longest of the batch, padding masked."""
    feed: dict[str, np.ndarray] = {}
    for s in config.sensors:
        arrays = [r[s.name] for r in requests]
        t_max = max(len(a) for a in arrays) if s.series else 0
        shape = (len(arrays), t_max, *arrays[0].shape[1:]) if s.series else (len(arrays), *arrays[0].shape)
        x = np.zeros(shape, np.float32)
        for i, a in enumerate(arrays):
            row = x[i, : len(a)] if s.series else x[i]
            np.subtract(a, s.mean, out=row, dtype=np.float32, casting="unsafe")
            np.divide(row, s.std, out=row)
        feed[s.name] = x
        if s.series:
            dates = np.zeros((len(arrays), t_max), np.int64)
            mask = np.zeros((len(arrays), t_max), np.bool_)
            for i, r in enumerate(requests):
                d = r[f"{s.name}_dates"]
                dates[i, : len(d)], mask[i, : len(d)] = d, True
            feed[f"{s.name}_dates"], feed[f"{s.name}_date_mask"] = dates, mask
    return {n: feed[n] for n in inputs}


class PeerModel:
    """One ONNX Runtime session per configuration, loaded at start (what a peer's ``setup`` does)."""

    def __init__(self, spec_path: str | Path) -> None:
        self.configs = read_spec(spec_path)
        self.sessions = [ort.InferenceSession(c.onnx, session_options(), providers=["CPUExecutionProvider"])
                         for c in self.configs]
        self.inputs = [[i.name for i in s.get_inputs()] for s in self.sessions]

    def stack(self, config: int, requests: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        return stack(self.configs[config], self.inputs[config], requests)

    def forward(self, config: int, requests: Sequence[Mapping[str, np.ndarray]]) -> np.ndarray:
        return self.sessions[config].run(None, self.stack(config, requests))[0]

    def run_mixed(self, items: Sequence[tuple[int, Mapping[str, np.ndarray]]]) -> list[tuple[np.ndarray, int]]:
        """A batch as it arrived, split by configuration: one forward per configuration present. Each answer
        with the size of the forward it ran in (the harness's mean batch size)."""
        out: list[tuple[np.ndarray, int] | None] = [None] * len(items)
        groups: dict[int, list[int]] = {}
        for i, (config, _) in enumerate(items):
            groups.setdefault(config, []).append(i)
        for config, idx in groups.items():
            rows = self.forward(config, [items[i][1] for i in idx])
            for i, row in zip(idx, rows, strict=True):
                out[i] = (row, len(idx))
        return [o for o in out if o is not None]


def peer_args(prog: str, argv: list[str] | None = None) -> argparse.Namespace:
    """The command line every peer server takes from the harness: its spec file, port, batch size and wait."""
    p = argparse.ArgumentParser(prog=prog)
    p.add_argument("--spec", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--batch-timeout", type=float, default=0.005, help="seconds")
    return p.parse_args(argv)
