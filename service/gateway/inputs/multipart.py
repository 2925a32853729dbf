"""(a) multipart/form-data: one file part per sensor, options and dates as form fields.

File parts are GeoTIFF (or ``.npy``), named after the sensor (``s2``, ``s1-asc``, ...). A time series
is either **one multi-band GeoTIFF with bands in dates x bands order** (band ``t*C + c`` is band
``c`` of date ``t``; ``T*C`` bands in all) or **one file per date** (repeat the part, ``C`` bands each,
in date order). Dates go in ``<sensor>_dates`` (comma-separated day-of-year or ISO dates).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from model.sensors import MODALITIES, SENSORS
from service.gateway.errors import InputError, LimitExceeded, MalformedRequest
from service.gateway.inputs.arrays import NPY_MAGIC, claim_npy, from_npy
from service.gateway.inputs.budget import DecodeBudget
from service.gateway.inputs.dates import parse_dates
from service.gateway.inputs.geotiff import check_geotiff, is_tiff, read_geotiff
from service.gateway.inputs.jsonbody import parse_model
from service.gateway.inputs.jsontext import loads
from service.gateway.inputs.tile import Georef, SensorInput, TileInput
from service.gateway.settings import GatewaySettings


async def _read_form(request: Request, limit: int) -> tuple[dict[str, list[bytes]], dict[str, str]]:
    try:
        form = await request.form(max_files=limit, max_fields=limit)
    except HTTPException as exc:  # python-multipart refused the body
        if "Too many" in str(exc.detail):
            raise LimitExceeded("max_form_parts", "body", str(exc.detail)) from None
        raise MalformedRequest("body", f"broken multipart body: {exc.detail}") from None
    files: dict[str, list[bytes]] = {}
    fields: dict[str, str] = {}
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                files.setdefault(key, []).append(await value.read())
            elif key in fields:
                raise InputError(key, "given twice")
            else:
                fields[key] = value
    finally:
        await form.close()  # spooled upload files
    return files, fields


def _file_field(name: str, blobs: list[bytes], j: int) -> str:
    return name if len(blobs) == 1 else f"{name}[{j}]"


def _claim_file(blob: bytes, field: str, sensor: str, settings: GatewaySettings, budget: DecodeBudget) -> None:
    """Claim what the file decodes to, from its header alone (anything else is refused by ``_decode_file``)."""
    if is_tiff(blob):
        check_geotiff(blob, field, settings.max_pixels_per_sensor,
                      settings.max_dates_per_series * SENSORS[sensor].channels, budget, sensor)
    elif blob.startswith(NPY_MAGIC):
        claim_npy(blob, field, budget, sensor)


def _decode_file(blob: bytes, field: str, sensor: str, settings: GatewaySettings
                 ) -> tuple[np.ndarray, Georef | None, np.ndarray | None]:
    """Values, georeference and validity (GeoTIFF nodata; None: every value is real); claimed already."""
    if is_tiff(blob):
        return read_geotiff(blob, field, settings.max_pixels_per_sensor,
                            settings.max_dates_per_series * SENSORS[sensor].channels, None, sensor)
    if blob.startswith(NPY_MAGIC):
        return from_npy(blob, field, None, sensor), None, None
    raise MalformedRequest(field, "neither a GeoTIFF nor a .npy file (checked the magic bytes)")


def _tile(files: dict[str, list[bytes]], dates: dict[str, np.ndarray], settings: GatewaySettings) -> TileInput:
    """Every file's header is claimed from the request's budget before any file is decoded: a request whose
    files together pass a limit costs no decoding at all."""
    budget = DecodeBudget.of(settings)
    for name, blobs in files.items():
        for j, blob in enumerate(blobs):
            _claim_file(blob, _file_field(name, blobs, j), name, settings, budget)
    return {name: _sensor(name, blobs, dates.get(name), settings) for name, blobs in files.items()}


def _sensor(name: str, blobs: list[bytes], dates: np.ndarray | None, settings: GatewaySettings) -> SensorInput:
    sensor = SENSORS[name]
    c = sensor.channels
    if len(blobs) > 1 and not sensor.time_series:
        raise InputError(name, f"{len(blobs)} files for a single-date sensor; send one")
    decoded = [_decode_file(b, _file_field(name, blobs, j), name, settings) for j, b in enumerate(blobs)]
    georef = decoded[0][1]
    for j, (_, g, _) in enumerate(decoded[1:], start=1):
        if g != georef:
            raise InputError(f"{name}[{j}]", "georeference differs from the first file of this series")
    if len(blobs) > 1:
        if any(a.ndim != 3 for a, _, _ in decoded):
            raise InputError(name, "one file per date: each must be [C, H, W]")
        shapes = {a.shape for a, _, _ in decoded}
        if len(shapes) > 1:
            raise InputError(name, f"one file per date: shapes differ ({sorted(shapes)})")
        data = np.stack([a for a, _, _ in decoded])
        valid = None
        if any(v is not None for _, _, v in decoded):
            valid = np.stack([np.broadcast_to(True if v is None else v, a.shape) for a, _, v in decoded])
    else:
        data, _, valid = decoded[0]
        if sensor.time_series and data.ndim == 3 and is_tiff(blobs[0]):
            bands = data.shape[0]
            if bands % c:
                raise InputError(name, f"{bands} bands is not a multiple of the {c} bands of {name} "
                                       f"({', '.join(sensor.bands)}); lay a series out as dates x bands")
            data = data.reshape(bands // c, c, *data.shape[1:])
            if valid is not None:
                # band t*C + c is band c of date t; a per-pixel mask ([1, H, W]) holds for every date and band
                valid = valid[None] if len(valid) == 1 else valid.reshape(data.shape)
    return SensorInput(name, data, dates, georef, dates_field=f"{name}_dates", valid=valid)


async def decode_multipart(request: Request, model: type[BaseModel],
                           settings: GatewaySettings) -> tuple[list[TileInput], Any]:
    files, fields = await _read_form(request, settings.max_form_parts)
    option_values: dict[str, Any] = {}
    dates: dict[str, np.ndarray] = {}
    for key, value in fields.items():
        if key in model.model_fields:
            option_values[key] = value
        elif key.endswith("_dates") and key.removesuffix("_dates") in SENSORS:
            dates[key.removesuffix("_dates")] = parse_dates(value, key, settings.max_dates_per_series)
        elif key in SENSORS:
            raise InputError(key, "sensor data must be a file part (with a filename), not a text field")
        else:
            raise InputError(key, f"unknown form field; expected a sensor file ({', '.join(MODALITIES)}), "
                                  f"<sensor>_dates, or one of {', '.join(model.model_fields)}")
    if "stats" in option_values:
        option_values["stats"] = loads(option_values["stats"], "stats", settings.max_decoded_bytes_per_request,
                                       "JSON {sensor: {mean: [...], std: [...]}}")
    options = parse_model(model, option_values)
    unknown = [k for k in files if k not in SENSORS]
    if unknown:
        raise InputError(unknown[0], f"unknown sensor; expected one of {', '.join(MODALITIES)}")
    if not files:
        raise InputError("body", "no sensor file parts; send at least one (e.g. -F s2=@s2.tif)")
    orphans = [n for n in dates if n not in files]
    if orphans:
        raise InputError(f"{orphans[0]}_dates", f"dates for {orphans[0]} but no {orphans[0]} file part")
    # Decoding takes CPU time (GDAL inflating a tile): in a thread, so the event loop keeps answering others.
    return [await run_in_threadpool(_tile, files, dates, settings)], options
