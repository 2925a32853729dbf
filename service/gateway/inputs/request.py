"""Dispatch on Content-Type to the decoder of each input encoding."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from service.gateway.errors import UnsupportedMediaType
from service.gateway.inputs.jsonbody import decode_json
from service.gateway.inputs.multipart import decode_multipart
from service.gateway.inputs.npzbody import decode_npz
from service.gateway.inputs.tile import TileInput
from service.gateway.settings import GatewaySettings

NPZ_TYPES = ("application/x-npz", "application/zip")


async def read_request(request: Request, options: type[BaseModel], body_model: type[BaseModel],
                       settings: GatewaySettings) -> tuple[list[TileInput], Any]:
    """Tiles and validated options of an inference request, whatever its encoding. Decoding (JSON parsing,
    base64, inflating) runs in a thread: the event loop keeps answering other requests meanwhile."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        return await run_in_threadpool(decode_json, await request.body(), body_model, settings)
    if content_type == "multipart/form-data":
        return await decode_multipart(request, options, settings)
    if content_type in NPZ_TYPES:
        return await run_in_threadpool(decode_npz, await request.body(), dict(request.query_params), options,
                                       settings)
    raise UnsupportedMediaType(
        "content-type", f"{content_type or '(none)'} is not accepted; send application/json, "
                        f"multipart/form-data (GeoTIFF or .npy parts) or application/x-npz")
