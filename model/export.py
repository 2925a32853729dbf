"""One modality configuration as a fixed graph: the wrapper export traces, and ONNX export.

A configuration (ordered modalities, their spatial sizes and channel counts, patch size, output)
fixes every shape except the batch size and each series' date count, which stay dynamic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

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
