"""``anysat worker``: one engine worker serving the AnySat model (``ModelWorkerSettings``: env ``ANYSAT_*``
or the generated flags; ``anysat worker --help`` lists them)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from service.engine.cli import worker_main
from service.runtime.runner import runner_from_settings
from service.runtime.settings import ModelWorkerSettings


def main(argv: Sequence[str] | None = None) -> int:
    return worker_main(argv, ModelWorkerSettings, prog="anysat worker", default_runner=runner_from_settings)


if __name__ == "__main__":
    sys.exit(main())
