"""Arrays without JSON overhead or inside JSON: base64 little-endian bytes + dtype + shape, ``.npy``, ``.npz``.

Shapes are read from headers and checked before any data is decoded; ``allow_pickle`` is never on.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import zipfile
from collections.abc import Sequence

import numpy as np

from service.gateway.errors import LimitExceeded, MalformedRequest

DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "int64", "float16", "float32", "float64")
NPY_MAGIC = b"\x93NUMPY"


def _check_dtype(dtype: np.dtype, field: str) -> np.dtype:
    if dtype.name not in DTYPES:
        raise MalformedRequest(field, f"dtype {dtype.str!r} is not supported; use one of {', '.join(DTYPES)}")
    return dtype


def from_base64(data: str, dtype: str, shape: Sequence[int], field: str, max_bytes: int) -> np.ndarray:
    """A little-endian C-order array from its base64 bytes; the byte count must match dtype x shape."""
    dt = _check_dtype(np.dtype(dtype).newbyteorder("<"), f"{field}.dtype")
    if any(n < 1 for n in shape):
        raise MalformedRequest(f"{field}.shape", f"every dimension must be >= 1, got {list(shape)}")
    expected = math.prod(shape) * dt.itemsize
    if expected > max_bytes:
        raise LimitExceeded("max_body_bytes", f"{field}.shape", f"shape {list(shape)} needs {expected} bytes")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedRequest(f"{field}.data", f"not valid base64: {exc}") from None
    if len(raw) != expected:
        raise MalformedRequest(f"{field}.data", f"{len(raw)} bytes, but dtype {dt.name} x shape {list(shape)} "
                                                f"needs {expected}")
    return np.frombuffer(raw, dtype=dt).reshape(tuple(shape))


def to_base64(array: np.ndarray) -> dict[str, object]:
    a = np.ascontiguousarray(array)
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)
    return {"dtype": a.dtype.name, "shape": list(a.shape), "data": base64.b64encode(a.tobytes()).decode()}


def from_npy(blob: bytes, field: str) -> np.ndarray:
    """One ``.npy`` file's array (header checked first; object arrays refused)."""
    f = io.BytesIO(blob)
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, OSError, SyntaxError) as exc:
        raise MalformedRequest(field, f"not a valid .npy file: {exc}") from None
    _check_dtype(dtype, field)
    if math.prod(shape) * dtype.itemsize > len(blob):
        raise MalformedRequest(field, f".npy header claims shape {list(shape)} but the file is {len(blob)} bytes")
    f.seek(0)
    try:
        return np.load(f, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise MalformedRequest(field, f"not a valid .npy file: {exc}") from None


def to_npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, np.ascontiguousarray(array), allow_pickle=False)
    return out.getvalue()


def from_npz(blob: bytes, field: str, max_bytes: int) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` (zip of .npy); members larger than ``max_bytes`` unpacked are refused."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(blob))
        infos = zf.infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise MalformedRequest(field, f"not a valid .npz (zip) file: {exc}") from None
    total = sum(i.file_size for i in infos)
    if total > max_bytes:  # a zip bomb announces itself in the central directory
        raise LimitExceeded("max_body_bytes", field, f".npz unpacks to {total} bytes")
    arrays: dict[str, np.ndarray] = {}
    with zf:
        for info in infos:
            name = info.filename.removesuffix(".npy")
            try:
                member = zf.read(info)
            except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError) as exc:
                raise MalformedRequest(f"{field}[{name}]", f"corrupt member: {exc}") from None
            arrays[name] = from_npy(member, f"{field}[{name}]")
    return arrays


def to_npz(arrays: dict[str, np.ndarray]) -> bytes:
    out = io.BytesIO()
    np.savez(out, **{k: np.ascontiguousarray(v) for k, v in arrays.items()})
    return out.getvalue()
