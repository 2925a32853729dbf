"""Requirements the wheels in a directory need on *another* Python than the one that resolved them.

`pip wheel` evaluates markers for the host's Python (here 3.11.7); the image's Python can be an earlier patch
release (Debian bookworm: 3.11.2), where e.g. redis needs ``async-timeout`` (``python_full_version < "3.11.3"``).
This prints, one a line, every requirement of every wheel in DIR whose marker holds for the target Python, so
deploy/docker/wheelhouse.sh can download what is missing.

    python deploy/docker/marker_deps.py build/wheelhouse/deps 3.11.2
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def requirements(wheels: Path, python: str) -> list[str]:
    env = {**default_environment(), "python_full_version": python, "python_version": ".".join(python.split(".")[:2])}
    have = {canonicalize_name(w.name.split("-")[0]) for w in wheels.glob("*.whl")}
    needed: dict[str, str] = {}
    for wheel in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(wheel) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            lines = z.read(meta).decode().splitlines()
        extras = {"hiredis", "http"}  # the extras the project asks of its dependencies (redis[hiredis], ...)
        for line in lines:
            if not line.startswith("Requires-Dist:"):
                continue
            req = Requirement(line.split(":", 1)[1].strip())
            name = canonicalize_name(req.name)
            if name in have or req.marker is None:
                continue
            if any(req.marker.evaluate({**env, "extra": e}) for e in ("", *extras)):
                needed[name] = str(req).split(";")[0].strip()
    return sorted(needed.values())


if __name__ == "__main__":
    print("\n".join(requirements(Path(sys.argv[1]), sys.argv[2])))
