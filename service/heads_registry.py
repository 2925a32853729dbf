"""The heads the gateway can serve: ``<name>.safetensors`` files of the heads directory (the format
``model.heads.save_head`` / training writes). Only the metadata header is read here; workers load weights."""

from __future__ import annotations

import re
from pathlib import Path

from safetensors import safe_open

from model.heads import HEAD_FORMAT, HeadConfig
from service.api.problems import InputError, NotFound

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class HeadRegistry:
    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._cache: dict[str, tuple[float, HeadConfig]] = {}

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
        return self._cache[name][1]
