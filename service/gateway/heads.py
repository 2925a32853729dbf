"""The heads the gateway can serve: ``<name>.safetensors`` files of the heads directory (the format
``model.heads.save_head`` / training writes). Only the metadata header is read here; workers load weights.
The header also holds the normalisation statistics the head was fitted with (``recorded_stats``).

A head is a linear map fitted on one encoder's features: on another encoder's it returns confident
nonsense. Heads record the sha256 of the encoder they were fitted on, and a head whose encoder is not
the one served is refused (409) instead of answered."""

from __future__ import annotations

import re
from pathlib import Path

from safetensors import safe_open

from model.checkpoint import file_sha256
from model.heads import HEAD_FORMAT, HeadConfig
from service.gateway.errors import Conflict, InputError, NotFound
from service.gateway.normalization import RecordedStats, parse_recorded

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class HeadRegistry:
    def __init__(self, directory: Path | None, encoder: Path | None = None) -> None:
        self.directory = directory
        self.encoder = encoder
        self._cache: dict[str, tuple[float, HeadConfig]] = {}
        self._encoder_sha: tuple[tuple[int, float], str] | None = None

    def encoder_sha256(self) -> str | None:
        """sha256 of the served encoder file (None if unknown); recomputed only when the file changes."""
        if self.encoder is None or not self.encoder.is_file():
            return None
        stat = self.encoder.stat()
        key = (stat.st_size, stat.st_mtime)
        if self._encoder_sha is None or self._encoder_sha[0] != key:
            self._encoder_sha = (key, file_sha256(self.encoder))
        return self._encoder_sha[1]

    def names(self) -> list[str]:
        if self.directory is None or not self.directory.is_dir():
            return []
        return sorted(p.stem for p in self.directory.glob("*.safetensors") if _NAME.match(p.stem))

    def config(self, name: str) -> HeadConfig:
        """The head's config, or 404 naming ``head``. Names are checked first: no path ever leaves the dir."""
        if not _NAME.match(name) or ".." in name:
            raise InputError("head", f"invalid head name {name!r} (letters, digits, _ . -)")
        if self.directory is None:
            raise NotFound("head", "this gateway has no heads directory (set ANYSAT_HEADS_DIR)")
        path = self.directory / f"{name}.safetensors"
        if not path.is_file():
            raise NotFound("head", f"no head {name!r}; available: {', '.join(self.names()) or 'none'}")
        mtime = path.stat().st_mtime
        cached = self._cache.get(name)
        if cached is None or cached[0] != mtime:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
            if meta.get("format") != HEAD_FORMAT:
                raise NotFound("head", f"{path.name} is not an anysat head file")
            self._cache[name] = (mtime, HeadConfig.from_json(meta["config"]))
        config = self._cache[name][1]
        served = self.encoder_sha256()
        if config.encoder_sha256 and served and self.encoder is not None and config.encoder_sha256 != served:
            raise Conflict("head", f"head {name!r} was fitted on encoder sha256 {config.encoder_sha256[:12]}…, "
                                   f"but this gateway serves {self.encoder.name} ({served[:12]}…); serve it with "
                                   "its encoder, or fit it again on this one (anysat train probe)")
        return config

    def recorded_stats(self, name: str) -> RecordedStats:
        """The statistics head ``name`` was fitted with (``metadata["normalization"]``), labelled ``head:<name>``;
        checked like ``config`` (404 / 409)."""
        return RecordedStats(f"head:{name}", parse_recorded(self.config(name).metadata.get("normalization"),
                                                            f"head {name}"))
