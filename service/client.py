"""A small Python client: numpy arrays or GeoTIFF paths in, arrays or GeoTIFFs out.

    from service.client import AnySatClient
    client = AnySatClient("http://127.0.0.1:8000", api_key=None)
    emb = client.embed({"s2": s2_raw}, dates={"s2": [120, 150]}, patch_size=20, output="patch")
    emb = client.embed_geotiffs({"aerial": "aerial.tif", "s2": "s2_series.tif"},
                                dates={"s2": ["2020-05-18", "2020-06-02"]}, patch_size=20)
    client.mask_geotiffs({"l7": "scene.tif"}, head="landcover", out_path="mask.tif")

A busy or briefly unavailable gateway (429, 503) is retried, ``retries`` times at most, after the ``Retry-After``
it sends (capped at ``max_retry_after_s``; exponential backoff when absent), never waiting more than
``max_retry_wait_s`` in all. Every error answer raises a typed ``AnySatError`` subclass (``BadInput``,
``LimitExceeded``, ``Overloaded``, ...) carrying ``status``, ``code``, ``field``, ``message`` and ``limit``.

Imports numpy and httpx only (its array codec is its own), so it installs anywhere the server's stack does not.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

PathLike = str | os.PathLike[str]

# Statuses worth retrying: the request was not run (429: refused at admission; 503: queue or model unavailable).
RETRY_STATUSES = frozenset({429, 503})


class AnySatError(RuntimeError):
    """The gateway answered an error. ``status``; the decoded ``error`` body as sent; and from it ``code``,
    ``field`` (the input at fault, "" if none), ``message``, ``limit`` (the setting exceeded, if any) and
    ``retry_after`` (seconds, from the Retry-After header, if sent)."""

    def __init__(self, status: int, error: Any, *, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {error}")
        self.status = status
        self.error = error
        self.retry_after = retry_after
        if isinstance(error, Mapping):  # /v1: {"code", "field", "message", "limit"?}
            self.code: str | None = error.get("code")
            self.field: str = error.get("field") or ""
            self.message: str = str(error.get("message", ""))
            self.limit: str | None = error.get("limit")
        else:  # /v2 (a string) or a body that was not JSON
            self.code, self.field, self.message, self.limit = None, "", str(error), None


class BadInput(AnySatError):
    """400, 415, 406 or 422: the request itself is wrong (``field`` says where)."""


class LimitExceeded(BadInput):
    """413 (or a 422 with code ``limit_exceeded``): a configured limit, named in ``limit``, was exceeded."""


class Unauthorized(AnySatError):
    """401: missing or invalid API key."""


class NotFound(AnySatError):
    """404: unknown route, model or head."""


class Conflict(AnySatError):
    """409: valid, but this deployment cannot honour it as configured (e.g. a head fitted on another encoder)."""


class Overloaded(AnySatError):
    """429: refused at admission (``limit``: max_in_flight or the queue's depth); ``retry_after`` says when."""


class ServerError(AnySatError):
    """5xx: the service failed, not the request."""


class Unavailable(ServerError):
    """503: the queue or the model is unavailable right now."""


class DeadlineExceeded(ServerError):
    """504: no result within the request deadline."""


_BY_STATUS: dict[int, type[AnySatError]] = {400: BadInput, 406: BadInput, 415: BadInput, 422: BadInput,
                                            401: Unauthorized, 404: NotFound, 409: Conflict, 413: LimitExceeded,
                                            429: Overloaded, 503: Unavailable, 504: DeadlineExceeded}


def error_for(status: int, error: Any, retry_after: float | None = None) -> AnySatError:
    """The typed error of an error answer."""
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else AnySatError)
    if isinstance(error, Mapping) and error.get("code") == "limit_exceeded":
        cls = LimitExceeded
    return cls(status, error, retry_after=retry_after)


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: delay-seconds or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError):
        return None


# ---------------------------------------------------------------- arrays (the wire format's, both ways)

def _to_base64(array: np.ndarray) -> dict[str, Any]:
    a = np.ascontiguousarray(array)
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)
    return {"dtype": a.dtype.name, "shape": list(a.shape), "data": base64.b64encode(a.tobytes()).decode()}


def _decode(b64: Mapping[str, Any]) -> np.ndarray:
    dtype = np.dtype(b64["dtype"]).newbyteorder("<")
    return np.frombuffer(base64.b64decode(b64["data"]), dtype=dtype).reshape(tuple(b64["shape"])).copy()


def _from_npy(blob: bytes) -> np.ndarray:
    return np.load(io.BytesIO(blob), allow_pickle=False)


@dataclass(frozen=True)
class TileResult:
    arrays: dict[str, np.ndarray]  # "embedding", or "class_map" (+ "probabilities")
    georef: dict[str, Any] | None
    extra: dict[str, Any]  # e.g. "class" for classification heads


class AnySatClient:
    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 120.0, *, retries: int = 3,
                 max_retry_after_s: float = 10.0, max_retry_wait_s: float = 30.0) -> None:
        """``retries``: how often a 429 or 503 is retried (0: raise at once); each wait is the gateway's
        Retry-After capped at ``max_retry_after_s``, and all waits of one call add up to ``max_retry_wait_s``
        at most (past it, the error is raised)."""
        if retries < 0 or max_retry_after_s < 0 or max_retry_wait_s < 0:
            raise ValueError("retries, max_retry_after_s and max_retry_wait_s must be >= 0")
        headers = {"X-API-Key": api_key} if api_key else {}
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout_s)
        self.retries = retries
        self.max_retry_after_s = max_retry_after_s
        self.max_retry_wait_s = max_retry_wait_s

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> AnySatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- requests

    def models(self) -> dict[str, Any]:
        """``GET /v1/models``: the checkpoint, sensors, heads (with why one cannot be served) and limits."""
        return self._request("GET", "/v1/models").json()

    def embed(self, tiles: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]], *, patch_size: int,
              output: str = "tile", output_modality: str | None = None,
              dates: Mapping[str, Sequence[int | str]] | Sequence[Mapping[str, Sequence[int | str]]] | None = None,
              normalize: str = "auto", stats: Mapping[str, Any] | None = None) -> list[TileResult]:
        """Arrays (raw values unless ``normalize="none"``) -> one result per tile, via JSON."""
        options = {"patch_size": patch_size, "output": output, "output_modality": output_modality}
        return self._json("/v1/embeddings", tiles, dates, options, normalize, stats)

    def mask(self, tiles: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]], *, head: str,
             dates: Any = None, normalize: str = "auto", stats: Mapping[str, Any] | None = None,
             probabilities: bool = False) -> list[TileResult]:
        options = {"head": head, "probabilities": probabilities}
        return self._json("/v1/masks", tiles, dates, options, normalize, stats)

    def embed_geotiffs(self, files: Mapping[str, PathLike | Sequence[PathLike]], *, patch_size: int,
                       output: str = "tile", output_modality: str | None = None,
                       dates: Mapping[str, Sequence[int | str]] | None = None, normalize: str = "auto",
                       stats: Mapping[str, Any] | None = None) -> TileResult:
        """GeoTIFFs (a series: one multi-band file in dates x bands order, or a list of files) -> result."""
        fields = {"patch_size": patch_size, "output": output, "output_modality": output_modality}
        body = self._multipart("/v1/embeddings", files, dates, fields, normalize, stats, fmt="json")
        return self._results(body)[0]

    def mask_geotiffs(self, files: Mapping[str, PathLike | Sequence[PathLike]], *, head: str,
                      dates: Mapping[str, Sequence[int | str]] | None = None, normalize: str = "auto",
                      stats: Mapping[str, Any] | None = None, out_path: PathLike | None = None) -> bytes:
        """GeoTIFFs -> the class map as a GeoTIFF (CRS and transform of the input); written to ``out_path``."""
        tiff = self._multipart("/v1/masks", files, dates, {"head": head}, normalize, stats, fmt="geotiff")
        if out_path is not None:
            Path(out_path).write_bytes(tiff)
        return tiff

    def embed_npy(self, tile: Mapping[str, np.ndarray], *, patch_size: int, output: str = "tile",
                  dates: Mapping[str, Sequence[int]] | None = None, normalize: str = "auto") -> np.ndarray:
        """One tile as .npz in, the embedding as .npy out: no JSON, no base64."""
        arrays: dict[str, Any] = dict(tile)  # Any: numpy's stubs read **arrays as savez's flags
        for name, d in (dates or {}).items():
            arrays[f"{name}_dates"] = np.asarray(d, dtype=np.int64)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        r = self._request("POST", "/v1/embeddings", content=buf.getvalue(),
                          params={"patch_size": patch_size, "output": output, "normalize": normalize},
                          headers={"Content-Type": "application/x-npz", "Accept": "application/x-npy"})
        return _from_npy(r.content)[0]

    # ---------------------------------------------------------------- plumbing

    def _json(self, path: str, tiles: Any, dates: Any, options: dict[str, Any], normalize: str,
              stats: Any) -> list[TileResult]:
        tile_list = [tiles] if isinstance(tiles, Mapping) else list(tiles)
        date_list = [dates] * len(tile_list) if dates is None or isinstance(dates, Mapping) else list(dates)
        body_tiles = []
        for tile, tile_dates in zip(tile_list, date_list, strict=True):
            encoded = {}
            for name, array in tile.items():
                item: dict[str, Any] = _to_base64(np.asarray(array))
                if tile_dates and name in tile_dates:
                    item["dates"] = [d if isinstance(d, str) else int(d) for d in tile_dates[name]]
                encoded[name] = item
            body_tiles.append(encoded)
        body = {**{k: v for k, v in options.items() if v is not None}, "normalize": normalize, "tiles": body_tiles}
        if stats is not None:
            body["stats"] = stats
        return self._results(self._request("POST", path, json=body).json())

    def _multipart(self, path: str, files: Mapping[str, Any], dates: Any, fields: dict[str, Any], normalize: str,
                   stats: Any, fmt: str) -> Any:
        data = {k: str(v) for k, v in fields.items() if v is not None}
        data.update(normalize=normalize, format=fmt)
        if stats is not None:
            data["stats"] = json.dumps(stats)
        for name, ds in (dates or {}).items():
            data[f"{name}_dates"] = ",".join(str(d) for d in ds)
        parts = []
        for name, value in files.items():
            paths = [value] if isinstance(value, (str, os.PathLike)) else list(value)
            parts += [(name, (Path(p).name, Path(p).read_bytes(), "image/tiff")) for p in paths]
        r = self._request("POST", path, data=data, files=parts)
        return r.json() if fmt == "json" else r.content

    @staticmethod
    def _results(body: Mapping[str, Any]) -> list[TileResult]:
        out = []
        for t in body["tiles"]:
            arrays = {k: _decode(v) for k, v in t.items() if isinstance(v, dict) and "data" in v}
            extra = {k: v for k, v in t.items() if k not in arrays and k != "georef"}
            out.append(TileResult(arrays, t.get("georef"), extra))
        return out

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One call, retried on 429/503 within the retry budget; an error answer raises its typed error."""
        waited = 0.0
        for attempt in range(self.retries + 1):
            r = self.http.request(method, path, **kwargs)
            if r.status_code < 400:
                return r
            err = self._error(r)
            if r.status_code not in RETRY_STATUSES or attempt == self.retries:
                raise err
            # The gateway's hint, else exponential backoff; jittered so refused callers do not return together.
            wait = err.retry_after if err.retry_after is not None else 0.5 * 2**attempt
            wait = min(wait, self.max_retry_after_s) * random.uniform(1.0, 1.2)
            if waited + wait > self.max_retry_wait_s:
                raise err
            time.sleep(wait)
            waited += wait
        raise AssertionError("unreachable: the last attempt returns or raises")

    @staticmethod
    def _error(r: httpx.Response) -> AnySatError:
        try:
            error = r.json().get("error")
        except ValueError:
            error = r.text[:500]
        return error_for(r.status_code, error, parse_retry_after(r.headers.get("retry-after")))
