"""The decoded-size budget of one request: every decoder claims the bytes an array will take, read from its
header (TIFF directory, .npy header, JSON dtype x shape, v2 datatype x shape), before decoding anything.

The body limit (``max_body_bytes``) does not bound what a body decodes to: a 1.5 KB sparse deflate GeoTIFF
claims 2048 x 2048 x 100 float32 (1.6 GB). This does: ``max_decoded_bytes_per_sensor`` per sensor of a tile
(all files of a series together), ``max_decoded_bytes_per_request`` for the request as a whole (413 naming
the field and the limit).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from service.gateway.errors import LimitExceeded
from service.gateway.settings import GatewaySettings

PER_SENSOR = "max_decoded_bytes_per_sensor"
PER_REQUEST = "max_decoded_bytes_per_request"


def nbytes(shape: Iterable[int], itemsize: int) -> int:
    """Bytes of a ``shape`` array; Python ints, so a claimed 10**400-element shape stays a number to refuse."""
    return math.prod(shape) * itemsize


def shape_text(shape: Sequence[object]) -> str:
    """A client's shape for a message: at most 8 dimensions, numbers of more than 12 digits abbreviated."""
    def dim(n: object) -> str:
        if isinstance(n, int) and not -10**12 < n < 10**12:
            return f"{'-' if n < 0 else ''}~10^{int(abs(n).bit_length() * 0.30103)}"
        return repr(n)[:20]
    dims = [dim(n) for n in shape[:8]] + (["..."] if len(shape) > 8 else [])
    return f"[{', '.join(dims)}]"


class DecodeBudget:
    """What one request may decode to. Not thread-safe: one per request, used by its decoder."""

    def __init__(self, per_sensor: int, per_request: int) -> None:
        self.per_sensor = per_sensor
        self.per_request = per_request
        self.total = 0
        self._by_sensor: dict[str, int] = {}

    @classmethod
    def of(cls, settings: GatewaySettings) -> DecodeBudget:
        return cls(settings.max_decoded_bytes_per_sensor, settings.max_decoded_bytes_per_request)

    def claim(self, field: str, size: int, what: str, sensor: str | None = None) -> None:
        """Reserve ``size`` bytes for ``field`` (counted with the other claims of ``sensor``, default ``field``),
        or raise ``LimitExceeded`` (413) naming the limit it would pass."""
        key = sensor if sensor is not None else field
        for_sensor = self._by_sensor.get(key, 0) + size
        if for_sensor > self.per_sensor:
            raise LimitExceeded(PER_SENSOR, field, f"{what} decodes to {_size(for_sensor)}"
                                                   f"{' with the rest of ' + key if for_sensor != size else ''}, "
                                                   f"at most {_size(self.per_sensor)} per sensor")
        if self.total + size > self.per_request:
            raise LimitExceeded(PER_REQUEST, field, f"{what} brings the request's decoded arrays to "
                                                    f"{_size(self.total + size)}, at most {_size(self.per_request)}")
        self._by_sensor[key] = for_sensor
        self.total += size


def _size(n: int) -> str:
    if n >= 10**15:
        return f"about 10^{len(str(n)) - 1} bytes"
    return f"{n} bytes ({n / 2**20:.1f} MiB)"
