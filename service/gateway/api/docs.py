"""OpenAPI request bodies with an example per input encoding (JSON, multipart GeoTIFF, .npz)."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from pydantic import BaseModel

from model.sensors import SENSORS

_TS_LAYOUT = ("time series: one multi-band GeoTIFF with bands in dates x bands order (band t*C + c is band c "
              "of date t), or one part per date (repeat the field)")


def _b64(shape: tuple[int, ...], dtype: str = "float32") -> str:
    return base64.b64encode(np.zeros(shape, dtype=dtype).tobytes()).decode()


def json_example(mask: bool) -> dict[str, Any]:
    tile = {"s2": {"dtype": "float32", "shape": [2, 10, 6, 6], "data": _b64((2, 10, 6, 6)),
                   "dates": [120, "2020-06-15"], "crs": "EPSG:32632",
                   "transform": [10.0, 0.0, 565640.0, 0.0, -10.0, 5770980.0]}}
    if mask:
        return {"head": "landcover", "tiles": [tile], "normalize": "auto", "probabilities": True}
    return {"patch_size": 20, "output": "patch", "tiles": [tile], "normalize": "auto"}


def multipart_schema(options: type[BaseModel]) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for name, s in SENSORS.items():
        desc = f"{name}: GeoTIFF or .npy, {s.channels} bands ({', '.join(s.bands)}), {s.gsd:g} m"
        if s.time_series:
            props[name] = {"type": "array", "items": {"type": "string", "format": "binary"},
                           "description": f"{desc}; {_TS_LAYOUT}"}
            props[f"{name}_dates"] = {"type": "string", "description": "comma-separated day of year or ISO dates",
                                      "example": "2020-05-18,2020-06-02"}
        else:
            props[name] = {"type": "string", "format": "binary", "description": desc}
    for field, info in options.model_fields.items():
        schema: dict[str, Any] = {"type": "string", "description": info.description or field}
        if field == "stats":
            schema["description"] = "JSON: {sensor: {mean: [...], std: [...]}}"
        props[field] = schema
    return {"type": "object", "properties": props}


def request_body(options: type[BaseModel], body: type[BaseModel], mask: bool) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{body.__name__}"}
    curl_q = "head=landcover" if mask else "patch_size=20&output=tile"
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": ref, "examples": {"one tile": {"value": json_example(mask)}}},
        "multipart/form-data": {
            "schema": multipart_schema(options),
            "examples": {"GeoTIFFs": {"summary": "curl -F aerial=@aerial.tif -F s2=@s2_series.tif "
                                                 "-F s2_dates=2020-05-18,2020-06-02 -F patch_size=20",
                                      "value": {"patch_size": "20", "s2_dates": "2020-05-18,2020-06-02"}}}},
        "application/x-npz": {
            "schema": {"type": "string", "format": "binary",
                       "description": f"one tile: arrays <sensor> and <sensor>_dates; options in the query "
                                      f"string, e.g. ?{curl_q}"}},
    }}}
