"""``anysat worker``: one engine worker serving the AnySat model (``ModelWorkerSettings``: env ``ANYSAT_*``
or the generated flags; ``anysat worker --help`` lists them)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from service.engine.cli import worker_main
from service.runtime.device import DeviceUnavailable
from service.runtime.runner import runner_from_settings
from service.runtime.settings import ModelWorkerSettings

# Exit status of a worker refused its device: a configuration error like invalid settings (2), but its own code so
# a supervisor or orchestrator can tell "this machine has no usable GPU" from a typo.
EXIT_DEVICE_UNAVAILABLE = 3


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return worker_main(argv, ModelWorkerSettings, prog="anysat worker", default_runner=runner_from_settings)
    except DeviceUnavailable as exc:
        print(f"anysat worker: refusing to start: {exc}", file=sys.stderr)
        return EXIT_DEVICE_UNAVAILABLE


if __name__ == "__main__":
    sys.exit(main())
