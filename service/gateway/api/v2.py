"""KServe Open Inference Protocol v2: one model per output kind (``anysat-tile``, ``-patch``, ``-dense``,
``-all``), input tensors named after the sensors (``s2`` [B, T, C, H, W] FP32, ``s2_dates`` [B, T] INT64),
request parameters ``patch_size`` (required), ``output_modality`` (dense), ``normalize`` (``none``
default: v2 tensors are model-ready; ``auto`` applies the sensor table). ``tritonclient.http`` works as is.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from model.inputs import OUTPUTS
from model.sensors import SENSORS
from service.gateway import inference
from service.gateway.api.deps import ApiKey, GatewayDep
from service.gateway.api.schemas import MAX_PATCH_SIZE_M
from service.gateway.errors import InputError, LimitExceeded, NotFound
from service.gateway.inputs.budget import DecodeBudget
from service.gateway.inputs.dates import parse_dates
from service.gateway.inputs.tile import SensorInput, TileInput
from service.gateway.prepare import Query, prepare
from service.gateway.settings import GatewaySettings
from service.gateway.state import Gateway
from service.gateway.v2_protocol import InferRequest, decompress, input_arrays, parse_request, response

router = APIRouter(tags=["v2 (Open Inference Protocol)"])
VERSION = "1"


def _output_kind(gateway: Gateway, name: str) -> str:
    prefix = f"{gateway.settings.queue_prefix}-"
    kind = name.removeprefix(prefix)
    if not name.startswith(prefix) or kind not in OUTPUTS:
        models = ", ".join(f"{prefix}{o}" for o in OUTPUTS)
        raise NotFound("model", f"unknown model {name!r}; served: {models}")
    return kind


@router.get("/v2", summary="Server metadata")
async def server_metadata() -> dict[str, Any]:
    return {"name": "anysat-serve", "version": "0.1.0", "extensions": ["binary_tensor_data"]}


@router.get("/v2/health/live", summary="Server live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/v2/health/ready", summary="Server ready (Redis + a live worker)")
async def ready(gateway: GatewayDep) -> JSONResponse:
    ok, _ = await run_in_threadpool(gateway.readiness)
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


@router.get("/v2/models/{name}", summary="Model metadata")
@router.get("/v2/models/{name}/versions/{version}", include_in_schema=False)
async def model_metadata(name: str, gateway: GatewayDep, version: str = VERSION) -> dict[str, Any]:
    kind = _output_kind(gateway, name)
    d = (await run_in_threadpool(gateway.checkpoint)).get("embed_dim") or -1
    inputs: list[dict[str, Any]] = []
    for s, sensor in SENSORS.items():
        if sensor.time_series:
            inputs.append({"name": s, "datatype": "FP32", "shape": [-1, -1, sensor.channels, -1, -1]})
            inputs.append({"name": f"{s}_dates", "datatype": "INT64", "shape": [-1, -1]})
        else:
            inputs.append({"name": s, "datatype": "FP32", "shape": [-1, sensor.channels, -1, -1]})
    shape = {"tile": [-1, d], "patch": [-1, -1, -1, d], "all": [-1, -1, d],
             "dense": [-1, -1, -1, 2 * d if d > 0 else -1]}[kind]
    return {"name": name, "versions": [VERSION], "platform": "anysat-serve", "inputs": inputs,
            "outputs": [{"name": "embedding", "datatype": "FP32", "shape": shape}],
            "parameters": {"patch_size": "required, metres", "normalize": "none (default) | auto",
                           "output_modality": "dense only"}}


@router.get("/v2/models/{name}/ready", summary="Model ready")
@router.get("/v2/models/{name}/versions/{version}/ready", include_in_schema=False)
async def model_ready(name: str, gateway: GatewayDep, version: str = VERSION) -> JSONResponse:
    _output_kind(gateway, name)
    ok, _ = await run_in_threadpool(gateway.readiness)
    return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)


def _tiles(arrays: dict[str, np.ndarray], max_dates: int, max_tiles: int) -> list[TileInput]:
    sensors = [k for k in arrays if not k.endswith("_dates")]
    for k in arrays:
        base = k.removesuffix("_dates")
        if base not in SENSORS:
            raise InputError(f"inputs[{k}]", f"unknown input; expected sensor names ({', '.join(SENSORS)}) "
                                             f"and <sensor>_dates")
        if k.endswith("_dates") and base not in arrays:
            raise InputError(f"inputs[{k}]", f"dates without the {base} tensor")
    if not sensors:
        raise InputError("inputs", "no sensor tensor")
    batch = {arrays[s].shape[0] if arrays[s].ndim else 0 for s in sensors}
    if len(batch) != 1 or 0 in batch:
        raise InputError("inputs", f"every sensor tensor needs the same batch size B >= 1 on axis 0, got {batch}")
    (b,) = batch
    if b > max_tiles:  # before one SensorInput per tile is built
        raise LimitExceeded("max_tiles_per_request", "inputs", f"batch size B = {b}, at most {max_tiles} tiles")
    tiles: list[TileInput] = []
    for i in range(b):
        tile: TileInput = {}
        for s in sensors:
            dates = None
            dk = f"{s}_dates"
            if dk in arrays:
                d = arrays[dk]
                if d.ndim != 2 or d.shape[0] != b or d.dtype.kind not in "iu":
                    raise InputError(f"inputs[{dk}]", f"expected INT64 [B={b}, T], got {d.dtype} {list(d.shape)}")
                dates = parse_dates([int(v) for v in d[i]], f"inputs[{dk}]", max_dates)
            tile[s] = SensorInput(f"inputs[{s}]", arrays[s][i], dates, None, dates_field=f"inputs[{dk}]")
        tiles.append(tile)
    return tiles


def _query(kind: str, parameters: dict[str, Any]) -> Query:
    patch_size = parameters.get("patch_size")
    if isinstance(patch_size, str) and patch_size.isascii() and patch_size.isdigit() and len(patch_size) <= 12:
        patch_size = int(patch_size)
    if not isinstance(patch_size, int) or isinstance(patch_size, bool) or not 0 < patch_size <= MAX_PATCH_SIZE_M:
        big = isinstance(patch_size, int) and patch_size > MAX_PATCH_SIZE_M
        shown = f"a number above {MAX_PATCH_SIZE_M}" if big else f"{patch_size!r}"[:40]
        raise InputError("parameters.patch_size", f"required: patch size in metres, an integer in "
                                                  f"1..{MAX_PATCH_SIZE_M}, got {shown}")
    normalize = parameters.get("normalize", "none")
    if normalize not in ("none", "auto"):
        raise InputError("parameters.normalize", f"expected 'none' or 'auto', got {normalize!r}")
    modality = parameters.get("output_modality")
    if modality is not None and not isinstance(modality, str):
        raise InputError("parameters.output_modality", "expected a sensor name")
    return Query(patch_size, kind, modality if kind == "dense" else None, None, normalize)


def _decode(body: bytes, encoding: str | None, header_length: str | None, settings: GatewaySettings
            ) -> tuple[InferRequest, dict[str, np.ndarray]]:
    """The request and its input tensors; every size is checked before the data it bounds is decoded."""
    body = decompress(body, encoding, settings.max_body_bytes)
    req, binary = parse_request(body, header_length, settings.max_decoded_bytes_per_request)
    for o in req.outputs or []:
        if o.name != "embedding":
            raise InputError(f"outputs[{o.name}]", "this model has one output, 'embedding'")
    return req, input_arrays(req, binary, DecodeBudget.of(settings))


@router.post("/v2/models/{name}/infer", summary="Inference (JSON or binary tensor extension)", dependencies=[ApiKey],
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {
                 "$ref": "#/components/schemas/InferRequest"}}, "application/octet-stream": {"schema": {
                     "type": "string", "format": "binary"}}}}})
@router.post("/v2/models/{name}/versions/{version}/infer", include_in_schema=False, dependencies=[ApiKey])
async def infer(name: str, request: Request, gateway: GatewayDep, version: str = VERSION) -> Response:
    kind = _output_kind(gateway, name)
    settings = gateway.settings
    body = await request.body()
    # Inflating and parsing take CPU time: in a thread, so the event loop keeps answering others.
    req, arrays = await run_in_threadpool(_decode, body, request.headers.get("content-encoding"),
                                          request.headers.get("inference-header-content-length"), settings)
    del body
    # normalize=auto: the served checkpoint's recorded statistics first, as on /v1 (v2 has no heads).
    query = dataclasses.replace(_query(kind, req.parameters), recorded=(gateway.checkpoint_stats,))
    tiles = _tiles(arrays, settings.max_dates_per_series, settings.max_tiles_per_request)
    prepared = await run_in_threadpool(prepare, tiles, query, settings)
    results = await run_in_threadpool(inference.run, gateway, prepared)
    embeddings = [r["embedding"].astype(np.float32) for r in results]
    if len({e.shape for e in embeddings}) > 1:
        raise InputError("inputs", "tiles of one batch gave embeddings of different shapes")
    content, header_length = response(name, req, {"embedding": np.stack(embeddings)})
    headers = {} if header_length is None else {"Inference-Header-Content-Length": str(header_length)}
    media = "application/json" if header_length is None else "application/octet-stream"
    return Response(content, media_type=media, headers=headers)
