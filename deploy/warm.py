"""Pre-warm the workers' export cache: export every configuration listed in a config file (deploy/warm.json),
so no first request of those configurations waits for an export (tens of seconds with the demo encoder, minutes
with the official weights). The one-shot ``export`` service of docker-compose.yml runs this before the gateway
and the workers start; on a warm cache it only checks each entry (a cache hit) and exits 0.

    python deploy/warm.py deploy/warm.json          # checkpoint and cache from ANYSAT_CHECKPOINT / ANYSAT_EXPORT_DIR
    python deploy/warm.py deploy/warm.json --checkpoint weights/AnySat.pth --cache build/exports

Each entry is what ``anysat export --config`` takes: ``{"modalities": [[sensor, side_px], ...], "patch_size": ..,
"output": "tile" | "patch" | "all" | "dense", "output_modality": ..}``. The model is loaded once for all of them.
Exit status 1 if any configuration fails (the compose stack then does not start: a listed configuration that
cannot be exported is a deployment error, found here rather than by a request).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from model import create_model
from model.checkpoint import file_sha256
from service.runtime.configuration import ModalityConfig
from service.runtime.export import ExportCache, ExportError
from service.runtime.settings import RuntimeSettings


def configurations(path: Path) -> list[ModalityConfig]:
    d: Any = json.loads(path.read_text())
    entries = d["configurations"] if isinstance(d, dict) else d
    return [ModalityConfig(tuple((str(n), int(s)) for n, s in e["modalities"]), int(e["patch_size"]),
                           e.get("output", "tile"), e.get("output_modality")) for e in entries]


def main(argv: list[str] | None = None) -> int:
    settings = RuntimeSettings()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", type=Path, help="JSON file: {\"configurations\": [...]} or a list")
    p.add_argument("--checkpoint", type=Path, default=settings.checkpoint, help="default $ANYSAT_CHECKPOINT")
    p.add_argument("--cache", type=Path, default=settings.export_dir, help="default $ANYSAT_EXPORT_DIR")
    args = p.parse_args(argv)
    if args.checkpoint is None or not args.checkpoint.is_file():
        print(f"warm: no checkpoint at {args.checkpoint} (set ANYSAT_CHECKPOINT or --checkpoint)", file=sys.stderr)
        return 2
    try:
        configs = configurations(args.config)
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"warm: {args.config}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    model = create_model(checkpoint=str(args.checkpoint))
    cache = ExportCache(args.cache, model, file_sha256(args.checkpoint),
                        max_bytes=int(settings.export_cache_gb * 2**30))
    failed = 0
    for config in configs:
        t0 = time.perf_counter()
        try:
            result, hit = cache.get(config)
        except (ValueError, ExportError) as e:
            print(f"warm: FAILED {config.key()}: {e}", file=sys.stderr)
            failed += 1
            continue
        print(f"warm: {'hit ' if hit else 'exported'} {result.manifest['name']} {config.key()} "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
    print(f"warm: {len(configs) - failed}/{len(configs)} configurations in the cache at {args.cache} "
          f"({time.perf_counter() - started:.1f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
