"""One modality configuration as a fixed graph: the wrapper export traces, ONNX and TorchScript export, and
the check of an exported graph against eager PyTorch (fp32 and fp64).

A configuration (ordered modalities, their spatial sizes and channel counts, patch size, output)
fixes every shape except the batch size and each series' date count, which stay dynamic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .encoder import AnySat
from .inputs import Plan, plan_inputs
from .sensors import SENSORS

OPSET = 18


def input_names(data: Mapping[str, torch.Tensor]) -> list[str]:
    """Graph input names in a stable order: each modality, then its dates and date mask."""
    names = []
    for key in data:
        if key in SENSORS:
            names.append(key)
            if SENSORS[key].time_series:
                names += [f"{key}_dates", f"{key}_date_mask"]
    return names


class PlannedAnySat(nn.Module):
    """``AnySat`` frozen to one plan, taking positional tensors named by ``input_names``."""

    def __init__(self, model: AnySat, plan: Plan, names: Sequence[str], dense_layout: str = "spatial"):
        super().__init__()
        self.model, self.plan, self.names, self.dense_layout = model, plan, list(names), dense_layout

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        data = dict(zip(self.names, tensors, strict=True))
        return self.model.forward_planned(data, self.plan, self.dense_layout)


def with_date_masks(data: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add an all-valid ``<m>_date_mask`` to every series that lacks one (graphs always take one)."""
    out = dict(data)
    for key, x in data.items():
        if key in SENSORS and SENSORS[key].time_series and f"{key}_date_mask" not in out:
            out[f"{key}_date_mask"] = torch.ones(x.shape[:2], dtype=torch.bool)
    return out


def traceable_example(example: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``example`` with date masks and with batch and date counts of at least 2, for any tracer.

    Tracers (torch.export, torch.jit.trace) take a dimension of size 1 in the example for the constant 1
    (the 0/1 specialisation); the dense path's reshapes then froze the graph's batch or date count at 1.
    Repeated rows and dates only shape the trace, never its values."""
    example = with_date_masks(example)
    if next(iter(example.values())).shape[0] == 1:
        example = {k: torch.cat([v, v]) for k, v in example.items()}
    for key in [k for k in example if k in SENSORS and SENSORS[k].time_series]:
        if example[key].shape[1] == 1:
            for k in (key, f"{key}_dates", f"{key}_date_mask"):
                example[k] = torch.cat([example[k], example[k]], dim=1)
    return example


def export_onnx(model: AnySat, example: Mapping[str, torch.Tensor], path: str | Path, patch_size: int,
                output: str = "tile", output_modality: str | None = None, opset: int = OPSET,
                optimize: bool = False) -> list[str]:
    """Export one configuration to ONNX with dynamic batch and date counts; returns input names.

    ``optimize`` runs the exporter's graph optimiser; off by default because it quadruples export
    time (workers export on a configuration's first request) and ONNX Runtime applies its own
    graph optimisations when it loads the model."""
    example = traceable_example(example)
    plan = plan_inputs(example, patch_size, output, output_modality)
    names = input_names(example)
    wrapper = PlannedAnySat(model, plan, names).eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic: list[dict[int, torch.export.Dim]] = []
    for name in names:
        base = name.removesuffix("_date_mask").removesuffix("_dates")
        if SENSORS[base].time_series:
            dates = torch.export.Dim(f"{base.replace('-', '_')}_dates", min=1, max=4096)
            dynamic.append({0: batch, 1: dates})
        else:
            dynamic.append({0: batch})
    args = tuple(example[n] for n in names)
    with torch.no_grad():
        wrapper(*args)  # eager run: fills the constant caches the trace will read
    torch.onnx.export(wrapper, args, str(path), input_names=names, output_names=["embedding"],
                      dynamic_shapes=(tuple(dynamic),), opset_version=opset, dynamo=True,
                      external_data=False, optimize=optimize)
    return names


def example_inputs(modalities: Sequence[tuple[str, int]], batch: int = 1, dates: int = 6,
                   seed: int = 0) -> dict[str, torch.Tensor]:
    """Random inputs for ``(sensor, side in pixels)`` pairs (sorted 1-based day-of-year dates, all-valid date
    masks), for tracing and for checking an exported graph."""
    g = torch.Generator().manual_seed(seed)
    data: dict[str, torch.Tensor] = {}
    for name, side in modalities:
        s = SENSORS[name]
        if s.time_series:
            data[name] = torch.randn(batch, dates, s.channels, side, side, generator=g)
            data[f"{name}_dates"] = torch.sort(torch.randint(1, 366, (batch, dates), generator=g), dim=1).values
        else:
            data[name] = torch.randn(batch, s.channels, side, side, generator=g)
    return with_date_masks(data)


def export_torchscript(model: AnySat, example: Mapping[str, torch.Tensor], path: str | Path, patch_size: int,
                       output: str = "tile", output_modality: str | None = None) -> list[str]:
    """Trace one configuration to TorchScript, same inputs as ``export_onnx``; returns input names."""
    example = traceable_example(example)
    plan = plan_inputs(example, patch_size, output, output_modality)
    names = input_names(example)
    wrapper = PlannedAnySat(model, plan, names).eval()
    with torch.no_grad():
        traced = torch.jit.trace(wrapper, tuple(example[n] for n in names), check_trace=False)
    traced.save(str(path))
    return names


@dataclass(frozen=True)
class ExportCheck:
    """Max |error| of each exported graph against eager fp32 (``vs_eager``) and of every output, eager fp32's
    included, against an fp64 eager run (``vs_fp64``)."""

    vs_eager: dict[str, float]
    vs_fp64: dict[str, float]

    def accepted(self, max_error: float, conditioning_factor: float = 2.0) -> bool:
        """Within ``max_error`` of eager fp32, or, failing that, every output within ``max(max_error,
        conditioning_factor x eager fp32's own error)`` of fp64: some outputs are ill-conditioned in fp32
        (measured: dense l8 of the demo encoder at 60 px, eager fp32 2e-4 from fp64), and a graph must not be
        refused for being as exact as eager."""
        allowed = max(max_error, conditioning_factor * self.vs_fp64["eager"])
        return max(self.vs_eager.values()) <= max_error or max(self.vs_fp64.values()) <= allowed


def check_export(model: AnySat, modalities: Sequence[tuple[str, int]], patch_size: int, output: str,
                 output_modality: str | None, names: Sequence[str], onnx_path: str | Path | None = None,
                 torchscript_path: str | Path | None = None) -> ExportCheck:
    """Run the exported graphs on fresh random inputs, at another batch size and date count than the trace
    used and with one padded row, against eager fp32 and an fp64 copy of the model."""
    import copy

    ort = _onnxruntime()
    data = example_inputs(modalities, batch=3, dates=9, seed=1)
    for key in [k for k in data if k.endswith("_date_mask")][:1]:
        data[key][1, 6:] = False  # one padded row, as served batches will have
    kwargs = {"patch_size": patch_size, "output": output, "output_modality": output_modality}
    outputs: dict[str, np.ndarray] = {}
    with torch.no_grad():
        outputs["eager"] = model(data, **kwargs).numpy()
        if torchscript_path is not None:
            outputs["torchscript"] = torch.jit.load(str(torchscript_path))(*[data[n] for n in names]).numpy()
        exact = copy.deepcopy(model).double()({k: v.double() if v.is_floating_point() else v
                                               for k, v in data.items()}, **kwargs).numpy()
    if onnx_path is not None:
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        outputs["onnx"] = session.run(None, {n: data[n].numpy() for n in names})[0]
    vs_eager = {k: float(np.abs(v - outputs["eager"]).max()) for k, v in outputs.items() if k != "eager"}
    vs_fp64 = {k: float(np.abs(v - exact).max()) for k, v in outputs.items()}
    return ExportCheck(vs_eager, vs_fp64)


# --- reduced precision -------------------------------------------------------------------------------------------

# Ops an fp16 graph keeps in fp32 (beside ONNX Runtime's default block list): normalisations and softmax sum or
# average many values, and their variance and exp overflow or lose the small differences they normalise in fp16's
# 10-bit mantissa; reductions, powers and roots feed them. Matmuls and convolutions — the time — go to fp16.
FP16_KEEP_FP32 = ("LayerNormalization", "GroupNormalization", "InstanceNormalization", "BatchNormalization",
                  "Softmax", "LogSoftmax", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd",
                  "ReduceL2", "ReduceSumSquare", "Pow", "Sqrt", "Reciprocal", "Exp", "Log", "Erf")
MIN_COSINE = 0.999
_ORT_MISSING = ('ONNX Runtime is not installed: pip install -e ".[serve,cpu]" here, or ".[serve,gpu]" on an NVIDIA '
                "machine (never both)")


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise ImportError(f"{_ORT_MISSING} ({exc})") from exc
    return onnxruntime


def smooth_inputs(modalities: Sequence[tuple[str, int]], batch: int = 4, dates: int = 9,
                  seed: int = 0) -> dict[str, torch.Tensor]:
    """Inputs shaped like real normalised imagery, for judging reduced precision: spatially smooth fields (coarse
    noise upsampled), correlated across bands and dates, ~unit variance per band, plus a little pixel noise.

    White noise (``example_inputs``) is the worst case for nothing that matters here: it spreads attention evenly
    and averages rounding errors away, and it is not what the graph will see."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    data: dict[str, torch.Tensor] = {}
    for name, side in modalities:
        s = SENSORS[name]
        t = dates if s.time_series else 1
        coarse = max(2, side // 8)

        def field(n: int, t: int = t, coarse: int = coarse, side: int = side) -> torch.Tensor:
            low = torch.randn(batch * t * n, 1, coarse, coarse, generator=g)
            up = F.interpolate(low, size=(side, side), mode="bilinear", align_corners=False)
            return up.reshape(batch, t, n, side, side)

        x = 0.8 * field(1) + 0.5 * field(s.channels)  # a scene shared by the bands, and each band's own part
        if s.time_series:  # a seasonal swing common to the series, so dates differ the way they do in a field
            x = x + 0.5 * torch.sin(torch.linspace(0, 3.1, t)).view(1, t, 1, 1, 1) * torch.randn(
                batch, 1, s.channels, 1, 1, generator=g)
        x = x + 0.05 * torch.randn(x.shape, generator=g)
        x = (x - x.mean(dim=(1, 3, 4), keepdim=True)) / x.std(dim=(1, 3, 4), keepdim=True).clamp_min(1e-3)
        if s.time_series:
            data[name] = x.contiguous()
            data[f"{name}_dates"] = torch.sort(torch.randint(1, 366, (batch, t), generator=g), dim=1).values
        else:
            data[name] = x[:, 0].contiguous()
    return with_date_masks(data)


def convert_fp16(src: str | Path, dst: str | Path, keep_fp32: Sequence[str] = FP16_KEEP_FP32) -> None:
    """Write an fp16 copy of the ONNX graph at ``src``: weights and most ops in fp16, inputs and outputs left
    fp32 (the same feed as the fp32 graph), ``keep_fp32`` op types in fp32 with casts around them.

    The converter is ONNX Runtime's (``onnxruntime.transformers.float16``, shipped in both the CPU and GPU
    packages: no extra dependency) — the maintained fork of onnxconverter-common's."""
    import importlib

    import onnx

    _onnxruntime()
    float16 = importlib.import_module("onnxruntime.transformers.float16")
    graph = onnx.load(str(src))
    # The exporter's value_info types every intermediate fp32; left in, the converter takes them for the truth and
    # casts each fp16 weight back to fp32 before its matmul (an "fp16" graph that computes in fp32). Dropped, the
    # converter infers the types itself.
    del graph.graph.value_info[:]
    blocked = [*float16.DEFAULT_OP_BLOCK_LIST, *keep_fp32]
    converted = float16.convert_float_to_float16(graph, keep_io_types=True, op_block_list=blocked)
    onnx.save(converted, str(dst))


@dataclass(frozen=True)
class PrecisionCheck:
    """A reduced-precision graph against eager fp32 on ``smooth_inputs``: cosine of each embedding vector (a tile's,
    or a dense output's per position), min and mean, and the largest absolute difference."""

    cosine_min: float
    cosine_mean: float
    max_abs_error: float

    def accepted(self, min_cosine: float = MIN_COSINE) -> bool:
        return self.cosine_min >= min_cosine


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching vectors along the last axis (all other axes flattened)."""
    a2 = a.reshape(-1, a.shape[-1]).astype(np.float64)
    b2 = b.reshape(-1, b.shape[-1]).astype(np.float64)
    den = np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1)
    return np.asarray((a2 * b2).sum(axis=1) / np.maximum(den, 1e-30))


def check_precision(model: AnySat, modalities: Sequence[tuple[str, int]], patch_size: int, output: str,
                    output_modality: str | None, names: Sequence[str], onnx_path: str | Path,
                    batch: int = 4, dates: int = 9, seed: int = 2) -> PrecisionCheck:
    """Run the graph at ``onnx_path`` on ONNX Runtime's CPU provider against eager fp32, on ``smooth_inputs``."""
    ort = _onnxruntime()
    data = smooth_inputs(modalities, batch, dates, seed)
    with torch.no_grad():
        reference = model(data, patch_size=patch_size, output=output, output_modality=output_modality).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {n: data[n].numpy() for n in names})[0].astype(np.float32)
    cos = cosine_rows(got, reference)
    return PrecisionCheck(float(cos.min()), float(cos.mean()), float(np.abs(got - reference).max()))
