"""``anysat <command> [args]``: each command lives with the package it belongs to and is imported
only when called, so ``anysat check-parity`` never imports the serving stack."""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("service.gateway.serve:main",
              "run the REST gateway (plus a private Redis and supervised workers when ANYSAT_REDIS_URL is unset)"),
    "worker": ("service.runtime.worker:main", "run a serving worker on the Redis queue"),
    "check-parity": ("model.parity:main", "compare the model with the official implementation's outputs"),
    "benchmark": ("benchmarks.encoder:main", "time the encoder: eager vs ONNX Runtime, fp32 vs reduced"),
    "export": ("service.runtime.export:main",
               "export one modality configuration (ONNX, TorchScript, Triton repository)"),
    "train": ("training.cli:main", "pretrain (JEPA), fine-tune or probe; writes encoders and heads"),
    "settings": ("anysat.settings_doc:main", "print every setting of the gateway and the worker (docs/settings.md)"),
    "predict": ("service.gateway.scenes.cli:main",
                "a scene or region through the model, in-process: class map / embedding COG, tile GeoParquet"),
    "stats": ("training.data.stats:main", "per-sensor, per-band normalisation statistics of a dataset"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "usage: anysat <command> [args]\n\ncommands:\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if args[0] not in COMMANDS:
        print(f"anysat: unknown command {args[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module, func = COMMANDS[args[0]][0].split(":")
    return int(getattr(importlib.import_module(module), func)(args[1:]) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
