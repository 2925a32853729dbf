"""Wire format for requests and results: named numpy arrays plus a little JSON metadata.

The bytes are a safetensors file (8-byte little-endian header length, JSON header, raw data), so
any safetensors reader can open a payload, and nothing in it can execute code the way unpickling
would: it only ever yields plain arrays. Our metadata sits JSON-encoded under one key of the
header's ``__metadata__``, so one blob is one self-describing message.

We write and read the format here rather than through ``safetensors.numpy``: its ``save`` copies
every array three times and its ``load`` once more, and a request payload is hundreds of kB on the
latency path. ``encode`` joins the header and the arrays' own buffers once, and ``decode`` returns
read-only views into the blob.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

Tensors = dict[str, np.ndarray]

# Safetensors metadata is str -> str; all of ours sits JSON-encoded under this one key.
_META_KEY = "anysat"
_HEADER_LEN = struct.Struct("<Q")

# A request tensor ``<sensor>_stats`` ([2, C] float32: per-band means, then stds) asks the worker to normalise
# ``<sensor>`` itself; without it the sensor's values are taken as they are (already normalised).
STATS_SUFFIX = "_stats"

# Safetensors dtype names (little-endian by definition); BF16 and the F8 kinds have no numpy dtype.
_DTYPES: dict[str, np.dtype] = {
    name: np.dtype(code)
    for name, code in (("BOOL", "?"), ("U8", "u1"), ("I8", "i1"), ("U16", "<u2"), ("I16", "<i2"), ("U32", "<u4"),
                       ("I32", "<i4"), ("U64", "<u8"), ("I64", "<i8"), ("F16", "<f2"), ("F32", "<f4"), ("F64", "<f8"))
}
_NAMES = {(dtype.kind, dtype.itemsize): name for name, dtype in _DTYPES.items()}


class PayloadError(ValueError):
    """The bytes are not a payload this module wrote (truncated, corrupt or foreign)."""


def encode(tensors: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None) -> bytes:
    """Serialise ``tensors`` (any names, e.g. ``s1-asc_dates``) and JSON-able ``meta`` to bytes."""
    arrays = []
    for name, array in tensors.items():
        # asarray(order="C"), not ascontiguousarray: the latter turns 0-d scalars into shape (1,).
        a = np.asarray(array, order="C")
        dtype_name = _NAMES.get((a.dtype.kind, a.dtype.itemsize))
        if dtype_name is None:
            raise PayloadError(f"cannot encode payload: {name!r} has dtype {a.dtype}, not a safetensors dtype")
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        arrays.append((name, dtype_name, a))
    # Widest items first, as the safetensors writer does: with the header padded to 8 bytes every array
    # then starts aligned to its item size, so the reader's views need no copy to be aligned.
    arrays.sort(key=lambda item: -item[2].dtype.itemsize)
    header: dict[str, Any] = {"__metadata__": {_META_KEY: json.dumps(dict(meta or {}), separators=(",", ":"))}}
    buffers: list[bytes | memoryview] = []
    offset = 0
    for name, dtype_name, a in arrays:
        header[name] = {"dtype": dtype_name, "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        if a.nbytes:
            buffers.append(a.reshape(-1).view(np.uint8).data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return b"".join([_HEADER_LEN.pack(len(text)), text, *buffers])


def decode(blob: bytes) -> tuple[Tensors, dict[str, Any]]:
    """Inverse of ``encode``: returns ``(tensors, meta)``; raises ``PayloadError`` on bad bytes.

    The arrays are read-only views into ``blob``.
    """
    header, start = _read_header(blob)
    size = len(blob) - start
    tensors: Tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = _DTYPES[info["dtype"]], info["shape"], info["data_offsets"]
            if not all(type(n) is int for n in (*shape, begin, end)) or not isinstance(shape, list):
                raise TypeError("shape and offsets must be lists of integers")
        except (KeyError, TypeError, ValueError) as exc:
            raise PayloadError(f"cannot decode payload: tensor {name!r} has a malformed entry {info!r}") from exc
        count = math.prod(shape)
        if min(shape, default=0) < 0 or not 0 <= begin <= end <= size or end - begin != count * dtype.itemsize:
            raise PayloadError(f"cannot decode payload: tensor {name!r} {shape} {info['dtype']} does not fit "
                               f"bytes {begin}..{end} of {size}")
        array = np.frombuffer(blob, dtype, count, start + begin) if count else np.empty(0, dtype)
        tensors[name] = array.reshape(shape)
    meta = header.get("__metadata__") or {}
    try:
        meta = json.loads(meta.get(_META_KEY, "{}"))
    except (AttributeError, TypeError, ValueError) as exc:
        raise PayloadError(f"cannot decode payload: bad metadata: {exc}") from exc
    if not isinstance(meta, dict):
        raise PayloadError("payload metadata is not a JSON object")
    return tensors, meta


def _read_header(blob: bytes) -> tuple[dict[str, Any], int]:
    if len(blob) < _HEADER_LEN.size:
        raise PayloadError("payload shorter than its header length field")
    (n,) = _HEADER_LEN.unpack_from(blob)
    if n > len(blob) - _HEADER_LEN.size:
        raise PayloadError(f"payload header says {n} bytes, but only {len(blob) - _HEADER_LEN.size} follow")
    try:
        header = json.loads(blob[_HEADER_LEN.size : _HEADER_LEN.size + n])
    except ValueError as exc:
        raise PayloadError(f"cannot decode payload: header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise PayloadError("payload header is not a JSON object")
    return header, _HEADER_LEN.size + n
