"""Open Inference Protocol v2 (KServe) tensors: JSON data or the binary tensor extension, both ways.

Binary extension: the body is the JSON header (``Inference-Header-Content-Length`` bytes) followed by
each input's raw little-endian bytes in input order; an input carrying ``parameters.binary_data_size``
takes its bytes from there. Responses put outputs in binary when the request asks
(``parameters.binary_data_output``, or ``binary_data`` on a requested output).
"""

from __future__ import annotations

import gzip
import json
import zlib
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.gateway.errors import InputError, LimitExceeded, MalformedRequest
from service.gateway.inputs.budget import DecodeBudget, nbytes, shape_text
from service.gateway.inputs.jsontext import loads

DATATYPES: dict[str, str] = {"BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32",
                             "UINT64": "uint64", "INT8": "int8", "INT16": "int16", "INT32": "int32",
                             "INT64": "int64", "FP16": "float16", "FP32": "float32", "FP64": "float64"}
V2_OF_DTYPE = {v: k for k, v in DATATYPES.items()}


class InputTensor(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: Any = None


class OutputRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[InputTensor] = Field(min_length=1)
    outputs: list[OutputRequest] | None = None


def decompress(body: bytes, encoding: str | None, max_bytes: int) -> bytes:
    """tritonclient may gzip/deflate request bodies; inflate with a bound (no decompression bombs)."""
    if not encoding or encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise MalformedRequest("content-encoding", f"{encoding!r} is not supported (gzip, deflate)")
    d = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        out = d.decompress(body, max_bytes + 1)
    except (zlib.error, gzip.BadGzipFile) as exc:
        raise MalformedRequest("body", f"cannot inflate {encoding} body: {exc}") from None
    if len(out) > max_bytes:
        raise LimitExceeded("max_body_bytes", "body", f"inflated body is larger than {max_bytes} bytes")
    return out


def parse_request(body: bytes, header_length: str | None, max_parsed_bytes: int
                  ) -> tuple[InferRequest, memoryview]:
    """The JSON inference header (parsed in bounded memory, see ``jsontext``) and the binary section after it."""
    if header_length is not None:
        if not (header_length.isascii() and header_length.isdigit()) or len(header_length) > 20 \
                or int(header_length) > len(body):
            raise MalformedRequest("Inference-Header-Content-Length",
                                   f"{header_length!r} is not a length within the {len(body)}-byte body")
        n = int(header_length)
        head, rest = body[:n], memoryview(body)[n:]  # the tensors' bytes: a view, not a copy
    else:
        head, rest = body, memoryview(b"")
    raw = loads(head, "body", max_parsed_bytes, "a JSON inference request {inputs: [...], parameters: {...}}")
    try:
        return InferRequest.model_validate(raw), rest
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InputError(".".join(str(p) for p in first["loc"]), first["msg"]) from None


def input_arrays(request: InferRequest, binary: bytes | memoryview, budget: DecodeBudget) -> dict[str, np.ndarray]:
    """Every input tensor as a numpy array of its declared datatype and shape; every tensor's datatype x shape
    is claimed from ``budget`` (the sensor with its dates as one) before any data is converted."""
    sizes = [_claim(t, budget) for t in request.inputs]
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for t, expected in zip(request.inputs, sizes, strict=True):
        field, shown = f"inputs[{t.name}]", shape_text(t.shape)
        if t.name in arrays:
            raise InputError(field, "given twice")
        dtype = np.dtype(DATATYPES[t.datatype]).newbyteorder("<")
        count = expected // dtype.itemsize
        size = t.parameters.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size != expected or offset + size > len(binary):
                raise InputError(f"{field}.parameters.binary_data_size",
                                 f"{size!r} bytes do not hold {t.datatype} {shown} within the binary section")
            arrays[t.name] = np.frombuffer(binary, dtype=dtype, count=count, offset=offset).reshape(t.shape)
            offset += size
            continue
        if t.data is None:
            raise InputError(f"{field}.data", "no data and no binary_data_size")
        flat = _json_values(t.data, dtype, f"{field}.data", t.datatype)
        if flat.size != count:
            raise InputError(f"{field}.data", f"{flat.size} values for shape {shown} ({count} expected)")
        arrays[t.name] = flat.reshape(t.shape)
    if offset != len(binary):
        raise InputError("body", f"{len(binary) - offset} bytes of binary data belong to no input")
    return arrays


def _claim(t: InputTensor, budget: DecodeBudget) -> int:
    """Bytes tensor ``t`` decodes to (datatype and shape checked), claimed from ``budget``."""
    field = f"inputs[{t.name}]"
    if t.datatype not in DATATYPES:
        raise InputError(f"{field}.datatype", f"{t.datatype!r} is not one of {', '.join(DATATYPES)}")
    if any(not isinstance(n, int) or n < 0 for n in t.shape):
        raise InputError(f"{field}.shape", f"dimensions must be non-negative integers, got {shape_text(t.shape)}")
    size = nbytes(t.shape, np.dtype(DATATYPES[t.datatype]).itemsize)
    budget.claim(f"{field}.shape", size, f"{t.datatype} {shape_text(t.shape)}", sensor=t.name.removesuffix("_dates"))
    return size


# What JSON numbers may fill each kind of tensor: no float (or NaN) silently truncated into an integer tensor.
_SOURCE_KINDS = {"b": "b", "i": "biu", "u": "biu", "f": "biuf"}


def _json_values(data: Any, dtype: np.dtype, field: str, datatype: str) -> np.ndarray:
    """A tensor's JSON ``data`` (flat or nested lists) as a flat array of ``dtype``, or a 422 naming ``field``:
    strings, objects, floats for an integer tensor and integers outside its range are refused, not cast."""
    try:
        values = np.asarray(data)
    except (ValueError, TypeError, OverflowError) as exc:  # ragged lists
        raise InputError(field, f"not {datatype} values: {exc}") from None
    if values.size and values.dtype.kind not in _SOURCE_KINDS[dtype.kind]:
        kind = "objects or integers beyond 64 bits" if values.dtype.kind == "O" else f"{values.dtype.name} values"
        raise InputError(field, f"expected {datatype} values, got {kind}")
    if values.size and dtype.kind in "iu" and values.dtype.kind in "iu":
        info = np.iinfo(dtype)
        if values.min() < info.min or values.max() > info.max:
            raise InputError(field, f"values out of the {datatype} range [{info.min}, {info.max}]")
    return values.astype(dtype).reshape(-1)


def wants_binary(request: InferRequest, output: str) -> bool:
    for o in request.outputs or []:
        if o.name == output and "binary_data" in o.parameters:
            return bool(o.parameters["binary_data"])
    return bool(request.parameters.get("binary_data_output", False))


def response(model_name: str, request: InferRequest, outputs: dict[str, np.ndarray]) -> tuple[bytes, int | None]:
    """Body and, when any output is binary, the JSON header length."""
    entries, blobs = [], []
    for name, array in outputs.items():
        a = np.ascontiguousarray(array)
        entry: dict[str, Any] = {"name": name, "datatype": V2_OF_DTYPE[a.dtype.name], "shape": list(a.shape)}
        if wants_binary(request, name):
            raw = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = a.reshape(-1).tolist()
        entries.append(entry)
    body: dict[str, Any] = {"model_name": model_name, "model_version": "1", "outputs": entries}
    if request.id:
        body["id"] = request.id
    header = json.dumps(body).encode()
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)
