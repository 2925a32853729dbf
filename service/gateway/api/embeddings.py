"""``POST /v1/embeddings``: tiles of any sensor subset -> tile / patch / dense / all embeddings."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from service.gateway import inference, outputs
from service.gateway.api.deps import ApiKey, GatewayDep
from service.gateway.api.docs import request_body
from service.gateway.api.schemas import EmbeddingOptions, EmbeddingsJSON
from service.gateway.inputs.request import read_request
from service.gateway.prepare import PreparedTile, Query, normalization_used, prepare

router = APIRouter(tags=["embeddings"], dependencies=[ApiKey])


def output_grid(tile: PreparedTile, embedding_shape: tuple[int, ...]) -> dict[str, Any] | None:
    """Georeference of the embedding grid: 1 x 1 for tile, n x n for patch/all, h x w for dense."""
    if tile.georef is None:
        return None
    output = tile.config.output
    n = 1 if output == "tile" else embedding_shape[0] if output != "all" else round((embedding_shape[0] - 1) ** 0.5)
    w = embedding_shape[1] if output in ("patch", "dense") else n
    return tile.georef.resampled(w, n).to_json()


@router.post("/v1/embeddings", summary="Embed tiles",
             openapi_extra=request_body(EmbeddingOptions, EmbeddingsJSON, False),
             responses={200: {"description": "JSON (base64 arrays), .npy, .npz or GeoTIFF (format / Accept)"}})
async def embeddings(request: Request, gateway: GatewayDep) -> Response:
    """One tile (multipart, .npz) or a batch (JSON) of any subset of the 11 sensors.

    Returns one embedding per tile (`tile` [D], `patch` [n, n, D], `all` [1 + n², D], `dense`
    [h, w, 2D]) and, for georeferenced inputs, the georeference of its grid.
    """
    settings = gateway.settings
    tiles, options = await read_request(request, EmbeddingOptions, EmbeddingsJSON, settings)
    fmt = outputs.choose_format(options.format, request.headers.get("accept"))
    outputs.check_format(fmt, len(tiles), options.output != "all", "output=all (tile token + patch grid)")
    query = Query(options.patch_size, options.output, options.output_modality, None, options.normalize,
                  options.stats, recorded=(gateway.checkpoint_stats,), crop=options.crop)
    prepared = await run_in_threadpool(prepare, tiles, query, settings)
    results = await run_in_threadpool(inference.run, gateway, prepared)
    arrays = [r["embedding"] for r in results]
    meta = {"output": options.output, "patch_size": options.patch_size,
            "output_modality": prepared[0].config.output_modality, "normalization": normalization_used(prepared)}
    if fmt == "npy":
        return outputs.binary(fmt, outputs.stack(arrays, "embedding"), meta)
    if fmt == "npz":
        return outputs.binary(fmt, {"embedding": outputs.stack(arrays, "embedding")}, meta)
    grids = [output_grid(t, a.shape) for t, a in zip(prepared, arrays, strict=True)]
    if fmt == "geotiff":
        a = arrays[0]
        bands = a.reshape(1, 1, -1) if a.ndim == 1 else a
        tile = prepared[0]
        georef = tile.georef.resampled(bands.shape[1], bands.shape[0]) if tile.georef else None
        return outputs.binary(fmt, outputs.geotiff(bands.transpose(2, 0, 1).copy(), georef), meta)
    return outputs.json_response({**meta, "model": gateway.checkpoint().get("path"), "tiles": [
        {"embedding": outputs.encode_array(a), "georef": g} for a, g in zip(arrays, grids, strict=True)]})
