"""(b) JSON: ``{"tiles": [{"s2": {"dtype", "shape", "data", "dates"?, "crs"?, "transform"?}}], ...options}``."""

from __future__ import annotations

from typing import Any

from affine import Affine
from pydantic import BaseModel, ValidationError

from service.gateway.errors import InputError
from service.gateway.inputs.arrays import claim_base64, from_base64
from service.gateway.inputs.budget import DecodeBudget
from service.gateway.inputs.dates import parse_dates
from service.gateway.inputs.jsontext import loads
from service.gateway.inputs.tile import Georef, SensorInput, TileInput
from service.gateway.settings import GatewaySettings


def validation_error(exc: ValidationError, prefix: str = "") -> InputError:
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first["loc"])
    field = f"{prefix}.{field}" if prefix and field else prefix or field
    return InputError(field, first["msg"])


def parse_model(model: type[BaseModel], data: Any, prefix: str = "") -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, prefix) from None


def decode_json(body: bytes, model: type[BaseModel], settings: GatewaySettings) -> tuple[list[TileInput], Any]:
    raw = loads(body, "body", settings.max_decoded_bytes_per_request, "a JSON object {tiles: [...], ...options}")
    if not isinstance(raw, dict):
        raise InputError("body", f"expected a JSON object, got {type(raw).__name__}")
    request = parse_model(model, raw)
    del raw  # the parsed text can be as large as the arrays it decodes to
    budget = DecodeBudget.of(settings)
    for i, tile in enumerate(request.tiles):  # every shape claimed before any array is decoded
        for name, s in tile.items():
            claim_base64(s.dtype, s.shape, f"tiles[{i}].{name}", budget)
    tiles: list[TileInput] = []
    for i, tile in enumerate(request.tiles):
        decoded: TileInput = {}
        for name, s in tile.items():
            field = f"tiles[{i}].{name}"
            data = from_base64(s.data, s.dtype, s.shape, field, None)
            dates = parse_dates(s.dates, f"{field}.dates", settings.max_dates_per_series) if s.dates else None
            georef = None
            if s.transform is not None:
                georef = Georef(s.crs, Affine(*s.transform), s.shape[-1], s.shape[-2])
            elif s.crs is not None:
                raise InputError(f"{field}.transform", "a crs without a transform cannot be placed; send both")
            decoded[name] = SensorInput(field, data, dates, georef, dates_field=f"{field}.dates")
        tiles.append(decoded)
    options = request.model_copy(update={"tiles": []})
    return tiles, options
