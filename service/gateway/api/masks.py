"""``POST /v1/masks``: the same inputs plus a head -> class map (and probabilities) with class names."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from model.heads import HeadConfig
from service.gateway import inference, outputs
from service.gateway.api.deps import ApiKey, GatewayDep
from service.gateway.api.docs import request_body
from service.gateway.api.schemas import MaskOptions, MasksJSON
from service.gateway.errors import InputError
from service.gateway.inputs.request import read_request
from service.gateway.inputs.tile import TileInput
from service.gateway.normalization import RecordedStats
from service.gateway.prepare import Query, normalization_used, prepare

router = APIRouter(tags=["masks"], dependencies=[ApiKey])


def _probabilities(logits: np.ndarray, config: HeadConfig) -> np.ndarray:
    logits = logits.astype(np.float64)
    if config.multi_label:
        return (1 / (1 + np.exp(-logits))).astype(np.float32)
    e = np.exp(logits - logits.max(axis=0, keepdims=True))
    return (e / e.sum(axis=0, keepdims=True)).astype(np.float32)


def _query(head: str, config: HeadConfig, options: MaskOptions, tiles: list[TileInput],
           recorded: tuple[RecordedStats, ...]) -> Query:
    if options.patch_size is not None and options.patch_size != config.patch_size:
        raise InputError("patch_size", f"head {head!r} was fitted at {config.patch_size} m, got {options.patch_size}")
    for tile in tiles:
        extra = [n for n in tile if n not in config.modalities]
        if extra:
            raise InputError(tile[extra[0]].field,
                             f"head {head!r} was fitted on {', '.join(config.modalities)}; it cannot use {extra[0]}")
    if config.kind == "segmentation":
        return Query(config.patch_size, "dense", config.output_modality, head, options.normalize, options.stats,
                     recorded, options.crop)
    return Query(config.patch_size, "tile", None, head, options.normalize, options.stats, recorded, options.crop)


@router.post("/v1/masks", summary="Class maps from a head", openapi_extra=request_body(MaskOptions, MasksJSON, True),
             responses={200: {"description": "JSON, .npy (class maps), .npz or GeoTIFF (class map, CRS kept)"}})
async def masks(request: Request, gateway: GatewayDep) -> Response:
    """Segmentation heads give a class map per tile on the head's grid (GeoTIFF keeps CRS and
    transform); classification heads give one class per tile. Nodata is outside the class range."""
    settings = gateway.settings
    tiles, options = await read_request(request, MaskOptions, MasksJSON, settings)
    config = gateway.heads.config(options.head)
    fmt = outputs.choose_format(options.format, request.headers.get("accept"))
    outputs.check_format(fmt, len(tiles), True)
    # normalize=auto: the statistics the head was fitted with come first, then the encoder checkpoint's.
    recorded = (gateway.heads.recorded_stats(options.head), gateway.checkpoint_stats)
    query = _query(options.head, config, options, tiles, recorded)
    prepared = await run_in_threadpool(prepare, tiles, query, settings)
    results = await run_in_threadpool(inference.run, gateway, prepared)
    probs = [_probabilities(r["logits"], config) for r in results]
    maps = [outputs.class_map(p) for p in probs]
    nodata = maps[0][1]
    meta: dict[str, Any] = {"head": options.head, "kind": config.kind, "nodata": nodata,
                            "normalization": normalization_used(prepared)}
    if fmt == "npy":
        return outputs.binary(fmt, outputs.stack([m for m, _ in maps], "class map"), meta)
    if fmt == "npz":
        arrays = {"class_map": outputs.stack([m for m, _ in maps], "class map"),
                  "classes": np.asarray(config.class_names)}
        if options.probabilities:
            arrays["probabilities"] = outputs.stack(probs, "probabilities")
        return outputs.binary(fmt, arrays, meta)
    grids = []
    for t, (m, _) in zip(prepared, maps, strict=True):
        h, w = (m.shape if m.ndim == 2 else (1, 1))
        grids.append(t.georef.resampled(w, h) if t.georef else None)
    if fmt == "geotiff":
        band = maps[0][0].reshape(1, *(maps[0][0].shape if maps[0][0].ndim == 2 else (1, 1)))
        colormap: dict[int, tuple[int, int, int, int]] | None = None
        if config.colours and band.dtype == np.uint8:
            colormap = {i: (int(c[1:3], 16), int(c[3:5], 16), int(c[5:7], 16), 255)
                        for i, c in enumerate(config.colours)}
        tiff = outputs.geotiff(band, grids[0], nodata=nodata, descriptions=["class"],
                               tags={"classes": ",".join(config.class_names), "head": options.head}, colormap=colormap)
        return outputs.binary(fmt, tiff, meta)
    tiles_out = []
    for (m, _), p, g in zip(maps, probs, grids, strict=True):
        item: dict[str, Any] = {"class_map": outputs.encode_array(m), "georef": g.to_json() if g else None}
        if options.probabilities:
            item["probabilities"] = outputs.encode_array(p)
        if config.kind == "classification":
            item["class"] = config.class_names[int(m)]
            if config.multi_label:
                item["labels"] = [c for c, v in zip(config.class_names, p, strict=True) if v > 0.5]
        tiles_out.append(item)
    return outputs.json_response({**meta, "classes": list(config.class_names), "colours": list(config.colours),
                                  "patch_size": config.patch_size, "tiles": tiles_out})
