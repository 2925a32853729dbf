"""Wire format for requests and results: named numpy arrays plus a little JSON metadata.

Safetensors instead of pickle: a payload is attacker-controlled bytes from the gateway, and
unpickling those would execute code. Safetensors only ever yields plain arrays. The metadata
travels inside the safetensors header (``__metadata__``), so one blob is one self-describing
message and no second key is needed.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np
from safetensors.numpy import load, save

Tensors = dict[str, np.ndarray]

# Safetensors metadata is str -> str; all of ours sits JSON-encoded under this one key.
_META_KEY = "anysat"
_HEADER_LEN = struct.Struct("<Q")

# A request tensor ``<sensor>_stats`` ([2, C] float32: per-band means, then stds) asks the worker to normalise
# ``<sensor>`` itself; without it the sensor's values are taken as they are (already normalised).
STATS_SUFFIX = "_stats"


class PayloadError(ValueError):
    """The bytes are not a payload this module wrote (truncated, corrupt or foreign)."""


def encode(tensors: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None) -> bytes:
    """Serialise ``tensors`` (any names, e.g. ``s1-asc_dates``) and JSON-able ``meta`` to bytes."""
    # asarray(order="C"), not ascontiguousarray: the latter turns 0-d scalars into shape (1,).
    arrays = {name: np.asarray(array, order="C") for name, array in tensors.items()}
    metadata = {_META_KEY: json.dumps(dict(meta or {}), separators=(",", ":"))}
    try:
        return save(arrays, metadata=metadata)
    except Exception as exc:  # safetensors raises several types for unsupported dtypes
        raise PayloadError(f"cannot encode payload: {exc}") from exc


def decode(blob: bytes) -> tuple[Tensors, dict[str, Any]]:
    """Inverse of ``encode``: returns ``(tensors, meta)``; raises ``PayloadError`` on bad bytes."""
    try:
        tensors = load(blob)
        meta_json = _read_metadata(blob).get(_META_KEY, "{}")
        meta = json.loads(meta_json)
    except PayloadError:
        raise
    except Exception as exc:
        raise PayloadError(f"cannot decode payload: {exc}") from exc
    if not isinstance(meta, dict):
        raise PayloadError("payload metadata is not a JSON object")
    return tensors, meta


def _read_metadata(blob: bytes) -> dict[str, str]:
    # safetensors.numpy.load drops __metadata__, so read the header ourselves:
    # 8-byte little-endian header length, then that many bytes of JSON.
    if len(blob) < _HEADER_LEN.size:
        raise PayloadError("payload shorter than its header length field")
    (n,) = _HEADER_LEN.unpack_from(blob)
    header = json.loads(blob[_HEADER_LEN.size : _HEADER_LEN.size + n])
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise PayloadError("payload __metadata__ is not an object")
    return metadata
