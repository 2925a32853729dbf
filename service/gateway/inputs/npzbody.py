"""(c) ``application/x-npz``: one tile as an .npz (``<sensor>`` and ``<sensor>_dates`` arrays), options in
the query string. No JSON, no base64: the arrays travel as their own bytes."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel

from model.sensors import MODALITIES, SENSORS
from service.gateway.errors import InputError, LimitExceeded
from service.gateway.inputs.arrays import from_npz
from service.gateway.inputs.budget import DecodeBudget
from service.gateway.inputs.dates import parse_dates
from service.gateway.inputs.jsonbody import parse_model
from service.gateway.inputs.jsontext import loads
from service.gateway.inputs.tile import SensorInput, TileInput
from service.gateway.settings import GatewaySettings


def decode_npz(body: bytes, query: dict[str, str], model: type[BaseModel],
               settings: GatewaySettings) -> tuple[list[TileInput], Any]:
    stats = {"stats": loads(query["stats"], "stats", settings.max_decoded_bytes_per_request,
                            "JSON {sensor: {mean: [...], std: [...]}}")} if "stats" in query else {}
    options = parse_model(model, {k: v for k, v in query.items() if k != "stats"} | stats)
    arrays = from_npz(body, "body", DecodeBudget.of(settings), settings.max_form_parts)
    tile: TileInput = {}
    for key in arrays:
        base = key.removesuffix("_dates")
        if base not in SENSORS:
            raise InputError(key, f"unknown sensor; expected one of {', '.join(MODALITIES)} (or <sensor>_dates)")
        if key.endswith("_dates") and base not in arrays:
            raise InputError(key, f"dates for {base} but no {base} array")
    for key, data in arrays.items():
        if key.endswith("_dates"):
            continue
        dates = None
        if f"{key}_dates" in arrays:
            d = arrays[f"{key}_dates"]
            if d.ndim != 1 or d.dtype.kind not in "iu":
                raise InputError(f"{key}_dates", f"expected an integer array [T], got {d.dtype} {list(d.shape)}")
            if d.shape[0] > settings.max_dates_per_series:
                raise LimitExceeded("max_dates_per_series", f"{key}_dates", f"{d.shape[0]} dates")
            dates = parse_dates([int(v) for v in d], f"{key}_dates", settings.max_dates_per_series)
        tile[key] = SensorInput(key, np.asarray(data), dates, None, dates_field=f"{key}_dates")
    if not tile:
        raise InputError("body", "the .npz holds no sensor arrays")
    return [tile], options
