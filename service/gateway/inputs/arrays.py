"""Arrays without JSON overhead or inside JSON: base64 little-endian bytes + dtype + shape, ``.npy``, ``.npz``.

Shapes are read from headers and claimed from the request's ``DecodeBudget`` before any data is decoded;
``allow_pickle`` is never on.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import struct
import zipfile
from collections.abc import Sequence
from typing import IO, Any

import numpy as np

from service.gateway.errors import LimitExceeded, MalformedRequest
from service.gateway.inputs.budget import DecodeBudget, nbytes, shape_text

DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "int64", "float16", "float32", "float64")
NPY_MAGIC = b"\x93NUMPY"


def _check_dtype(dtype: np.dtype, field: str) -> np.dtype:
    if dtype.name not in DTYPES:
        raise MalformedRequest(field, f"dtype {dtype.str!r} is not supported; use one of {', '.join(DTYPES)}")
    return dtype


def base64_size(dtype: str, shape: Sequence[int], field: str) -> int:
    """Bytes a base64 array of ``dtype`` x ``shape`` decodes to (dtype and dimensions checked)."""
    dt = _check_dtype(np.dtype(dtype), f"{field}.dtype")
    if any(n < 1 for n in shape):
        raise MalformedRequest(f"{field}.shape", f"every dimension must be >= 1, got {shape_text(shape)}")
    return nbytes(shape, dt.itemsize)


def claim_base64(dtype: str, shape: Sequence[int], field: str, budget: DecodeBudget, sensor: str | None = None
                 ) -> None:
    budget.claim(f"{field}.shape", base64_size(dtype, shape, field), f"{dtype} {shape_text(shape)}", sensor)


def from_base64(data: str, dtype: str, shape: Sequence[int], field: str, budget: DecodeBudget | None,
                sensor: str | None = None) -> np.ndarray:
    """A little-endian C-order array from its base64 bytes; the byte count must match dtype x shape. The budget
    is claimed from dtype x shape before anything is decoded (None: already claimed, see ``claim_base64``)."""
    dt = _check_dtype(np.dtype(dtype).newbyteorder("<"), f"{field}.dtype")
    expected = base64_size(dtype, shape, field)
    if budget is not None:
        claim_base64(dtype, shape, field, budget, sensor)
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


def _npy_header(f: IO[bytes], field: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """``(shape, fortran_order, dtype)`` from a .npy header (numpy caps the header's size); nothing else read."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, OSError, SyntaxError, EOFError, zipfile.BadZipFile) as exc:
        raise MalformedRequest(field, f"not a valid .npy file: {exc}") from None
    _check_dtype(dtype, field)
    if any(n < 0 for n in shape):
        raise MalformedRequest(field, f".npy header claims shape {shape_text(shape)}")
    return shape, fortran, dtype


def claim_npy(blob: bytes, field: str, budget: DecodeBudget, sensor: str | None = None) -> None:
    """Claim what a ``.npy`` file decodes to, from its header alone."""
    shape, _, dtype = _npy_header(io.BytesIO(blob), field)
    budget.claim(field, nbytes(shape, dtype.itemsize), f".npy {dtype.name} {shape_text(shape)}", sensor)


def from_npy(blob: bytes, field: str, budget: DecodeBudget | None, sensor: str | None = None) -> np.ndarray:
    """One ``.npy`` file's array: header checked (dtype, size against the budget; None: already claimed, see
    ``claim_npy``) before any data is touched; object arrays refused. A read-only view of ``blob``, not a copy."""
    if budget is not None:
        claim_npy(blob, field, budget, sensor)
    f = io.BytesIO(blob)
    shape, fortran, dtype = _npy_header(f, field)
    size = nbytes(shape, dtype.itemsize)
    if len(blob) - f.tell() != size:
        raise MalformedRequest(field, f".npy header claims shape {shape_text(shape)} ({size} bytes of {dtype.name}) "
                                      f"but {len(blob) - f.tell()} bytes follow it")
    flat = np.frombuffer(blob, dtype=dtype, count=math.prod(shape), offset=f.tell())
    return flat.reshape(shape, order="F" if fortran else "C")


def to_npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, np.ascontiguousarray(array), allow_pickle=False)
    return out.getvalue()


def from_npz(blob: bytes, field: str, budget: DecodeBudget, max_members: int) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` (zip of .npy). Members are inflated only once every member's .npy header (read
    from its stream, a few hundred bytes) has been claimed from the budget, and never past the size it declares:
    a zip bomb is refused from its headers, before anything is decoded. Members ``<sensor>`` and
    ``<sensor>_dates`` count as one sensor; more than ``max_members`` (the parts of a request, as for multipart)
    are refused before the zip directory is read."""
    members = _zip_entries(blob)
    if members > max_members:
        raise LimitExceeded("max_form_parts", field, f".npz holds {members} arrays, at most {max_members}")
    try:
        zf = zipfile.ZipFile(io.BytesIO(blob))
        infos = zf.infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise MalformedRequest(field, f"not a valid .npz (zip) file: {exc}") from None
    arrays: dict[str, np.ndarray] = {}
    with zf:
        for info in infos:  # every header first: nothing is inflated if the members together are too large
            name = info.filename.removesuffix(".npy")
            shape, _, dtype, size = _member(zf, info, f"{field}[{name}]", read=False)
            budget.claim(f"{field}[{name}]", size, f".npz member {dtype.name} {shape_text(shape)}",
                         sensor=name.removesuffix("_dates"))
        for info in infos:
            name = info.filename.removesuffix(".npy")
            shape, fortran, dtype, raw = _member(zf, info, f"{field}[{name}]", read=True)
            arrays[name] = np.frombuffer(raw, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return arrays


def _member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, field: str, read: bool) -> tuple[Any, bool, np.dtype, Any]:
    """``(shape, fortran_order, dtype, size)`` from a member's .npy header, or with ``read`` its data bytes
    in place of the size; only the header is inflated unless ``read``."""
    try:
        with zf.open(info) as stream:
            shape, fortran, dtype = _npy_header(stream, field)
            size = nbytes(shape, dtype.itemsize)
            header = stream.tell()
            if info.file_size != header + size:
                raise MalformedRequest(field, f"header claims {size} bytes of data, the zip directory "
                                              f"{info.file_size - header}")
            if not read:
                return shape, fortran, dtype, size
            raw = stream.read(size)  # zipfile stops at file_size and checks the CRC there
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
        raise MalformedRequest(field, f"corrupt member: {exc}") from None
    if len(raw) != size:
        raise MalformedRequest(field, f"member ends after {len(raw)} of {size} bytes")
    return shape, fortran, dtype, raw


def _zip_entries(blob: bytes) -> int:
    """Entries a zip's end-of-central-directory record announces, read before ``ZipFile`` builds one object per
    entry (a 64 MiB zip can announce 600,000). 0 when there is no such record (``ZipFile`` then says why)."""
    at = blob.rfind(b"PK\x05\x06", max(0, len(blob) - 22 - 65535))
    if at < 0 or at + 22 > len(blob):
        return 0
    (entries,) = struct.unpack_from("<H", blob, at + 10)
    return int(entries) if entries != 0xFFFF else 2**16  # 0xFFFF: Zip64, more than fit in 16 bits


def to_npz(arrays: dict[str, np.ndarray]) -> bytes:
    out = io.BytesIO()
    members: dict[str, Any] = {k: np.ascontiguousarray(v) for k, v in arrays.items()}  # Any: not savez's flags
    np.savez(out, **members)
    return out.getvalue()
