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
import sys
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


class JobFailed(AnySatError):
    """A scene job ended failed or cancelled; ``job`` is its last state (``job["error"]`` says why)."""

    def __init__(self, job: Mapping[str, Any]) -> None:
        error = job.get("error") or {"code": job.get("state"), "message": f"job {job.get('state')}"}
        super().__init__(200, error)
        self.job = dict(job)


class _Progress:
    """tqdm when it is installed, else one line on stderr rewritten in place."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled, self.bar, self.started = total, enabled, None, time.monotonic()
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="tile", dynamic_ncols=True)
            except ImportError:
                pass

    def update(self, done: int, eta_s: float | None) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            return
        rate = done / max(time.monotonic() - self.started, 1e-9)
        eta = f", ETA {eta_s:.0f} s" if eta_s is not None else ""
        print(f"\r{done}/{self.total} tiles ({rate:.1f} tiles/s{eta})", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            print(file=sys.stderr)


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

    # ---------------------------------------------------------------- scene jobs

    def submit_job(self, sensors: Mapping[str, PathLike | Sequence[PathLike]], *, upload: bool = True,
                   **spec: Any) -> dict[str, Any]:
        """``POST /v1/jobs``: ``sensors`` maps a sensor to its files (a series: several files, or one multi-band
        file); uploaded with the request (streamed from disk), or with ``upload=False`` named as paths the
        service reads (under its ``ANYSAT_JOB_ROOTS``). ``spec``: ``dates``, ``bands``, ``nodata``, ``head``,
        ``output`` (dense, patch, tile), ``tile_size``, ``overlap``, ``patch_size``, ``crs``, ``bbox``, ... as
        ``anysat predict``'s flags. Returns the job (``id``, ``state``, ``tiles_total``, ...)."""
        body = {k: v for k, v in spec.items() if v is not None}
        named = {name: [str(v)] if isinstance(v, (str, os.PathLike)) else [str(p) for p in v]
                 for name, v in sensors.items()}
        if not upload:
            return self._request("POST", "/v1/jobs", json={**body, "sensors": named}).json()

        def parts() -> list[tuple[str, tuple[str, Any, str]]]:  # fresh file handles for each attempt
            return [(name, (Path(p).name, Path(p).open("rb"), "image/tiff")) for name, ps in named.items() for p in ps]

        return self._request("POST", "/v1/jobs", data={"job": json.dumps(body)}, files_factory=parts).json()

    def job(self, job_id: str) -> dict[str, Any]:
        """``GET /v1/jobs/{id}``: state (queued, running, done, failed, cancelled), tiles done/total, ETA, error."""
        return self._request("GET", f"/v1/jobs/{job_id}").json()

    def cancel_job(self, job_id: str) -> None:
        """``DELETE /v1/jobs/{id}``: cancels a queued or running job; deletes a finished one and its files."""
        self._request("DELETE", f"/v1/jobs/{job_id}")

    def download_job(self, job_id: str, out_path: PathLike) -> Path:
        """A done job's output, streamed to ``out_path`` (written under a temporary name, then renamed)."""
        out = Path(out_path)
        tmp = out.with_name(out.name + ".part")
        with self.http.stream("GET", f"/v1/jobs/{job_id}/result") as r:
            if r.status_code >= 400:
                r.read()
                raise self._error(r)
            with tmp.open("wb") as f:
                for chunk in r.iter_bytes(1 << 20):
                    f.write(chunk)
        tmp.replace(out)
        return out

    def predict(self, sensors: Mapping[str, PathLike | Sequence[PathLike]], *, out: PathLike, upload: bool = True,
                progress: bool = True, poll_s: float = 1.0, timeout_s: float | None = None,
                **spec: Any) -> dict[str, Any]:
        """A scene through the service, as ``anysat predict`` runs it locally: submit, follow its progress (a
        progress bar on stderr), download the output to ``out``. Raises ``JobFailed`` if the job fails or is
        cancelled, ``TimeoutError`` (the job cancelled) past ``timeout_s``. Returns the finished job."""
        job = self.submit_job(sensors, upload=upload, **spec)
        bar = _Progress(job["tiles_total"], enabled=progress)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            while job["state"] in ("queued", "running"):
                if deadline is not None and time.monotonic() > deadline:
                    self.cancel_job(job["id"])
                    raise TimeoutError(f"job {job['id']} not done within {timeout_s:g} s; cancelled")
                time.sleep(poll_s)
                job = self.job(job["id"])
                bar.update(job["tiles_done"], job.get("eta_s"))
        finally:
            bar.close()
        if job["state"] != "done":
            raise JobFailed(job)
        self.download_job(job["id"], out)
        return job

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
        files_factory = kwargs.pop("files_factory", None)
        for attempt in range(self.retries + 1):
            if files_factory is not None:
                kwargs["files"] = files_factory()
            try:
                r = self.http.request(method, path, **kwargs)
            finally:
                if files_factory is not None:  # the handles it opened for this attempt
                    for _, (_, handle, _) in kwargs["files"]:
                        handle.close()
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
