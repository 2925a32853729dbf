"""A small Python client: numpy arrays or GeoTIFF paths in, arrays or GeoTIFFs out.

    from service.client import AnySatClient
    client = AnySatClient("http://127.0.0.1:8000", api_key=None)
    emb = client.embed({"s2": s2_raw}, dates={"s2": [120, 150]}, patch_size=20, output="patch")
    emb = client.embed_geotiffs({"aerial": "aerial.tif", "s2": "s2_series.tif"},
                                dates={"s2": ["2020-05-18", "2020-06-02"]}, patch_size=20)
    client.mask_geotiffs({"l7": "scene.tif"}, head="landcover", out_path="mask.tif")
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from service.gateway.inputs.arrays import from_base64 as _from_b64
from service.gateway.inputs.arrays import from_npy, to_base64

PathLike = str | os.PathLike[str]


class AnySatError(RuntimeError):
    """The gateway answered an error; ``status`` and the decoded ``error`` body are kept."""

    def __init__(self, status: int, error: Any) -> None:
        super().__init__(f"HTTP {status}: {error}")
        self.status = status
        self.error = error


@dataclass(frozen=True)
class TileResult:
    arrays: dict[str, np.ndarray]  # "embedding", or "class_map" (+ "probabilities")
    georef: dict[str, Any] | None
    extra: dict[str, Any]  # e.g. "class" for classification heads


def _decode(b64: Mapping[str, Any]) -> np.ndarray:
    return _from_b64(b64["data"], b64["dtype"], b64["shape"], "response", 2**62).copy()


class AnySatClient:
    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 120.0) -> None:
        headers = {"X-API-Key": api_key} if api_key else {}
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout_s)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> AnySatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- requests

    def models(self) -> dict[str, Any]:
        """``GET /v1/models``: the checkpoint, sensors, heads (with why one cannot be served) and limits."""
        r = self.http.get("/v1/models")
        self._raise(r)
        return r.json()

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
        import io

        arrays = dict(tile)
        for name, d in (dates or {}).items():
            arrays[f"{name}_dates"] = np.asarray(d, dtype=np.int64)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        r = self.http.post("/v1/embeddings", content=buf.getvalue(),
                           params={"patch_size": patch_size, "output": output, "normalize": normalize},
                           headers={"Content-Type": "application/x-npz", "Accept": "application/x-npy"})
        self._raise(r)
        return from_npy(r.content, "response")[0]

    # ---------------------------------------------------------------- plumbing

    def _json(self, path: str, tiles: Any, dates: Any, options: dict[str, Any], normalize: str,
              stats: Any) -> list[TileResult]:
        tile_list = [tiles] if isinstance(tiles, Mapping) else list(tiles)
        date_list = [dates] * len(tile_list) if dates is None or isinstance(dates, Mapping) else list(dates)
        body_tiles = []
        for tile, tile_dates in zip(tile_list, date_list, strict=True):
            encoded = {}
            for name, array in tile.items():
                item: dict[str, Any] = to_base64(np.asarray(array))
                if tile_dates and name in tile_dates:
                    item["dates"] = [d if isinstance(d, str) else int(d) for d in tile_dates[name]]
                encoded[name] = item
            body_tiles.append(encoded)
        body = {**{k: v for k, v in options.items() if v is not None}, "normalize": normalize, "tiles": body_tiles}
        if stats is not None:
            body["stats"] = stats
        r = self.http.post(path, json=body)
        self._raise(r)
        return self._results(r.json())

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
        r = self.http.post(path, data=data, files=parts)
        self._raise(r)
        return r.json() if fmt == "json" else r.content

    @staticmethod
    def _results(body: Mapping[str, Any]) -> list[TileResult]:
        out = []
        for t in body["tiles"]:
            arrays = {k: _decode(v) for k, v in t.items() if isinstance(v, dict) and "data" in v}
            extra = {k: v for k, v in t.items() if k not in arrays and k != "georef"}
            out.append(TileResult(arrays, t.get("georef"), extra))
        return out

    @staticmethod
    def _raise(r: httpx.Response) -> None:
        if r.status_code >= 400:
            try:
                error = r.json().get("error")
            except ValueError:
                error = r.text[:500]
            raise AnySatError(r.status_code, error)
