"""Command lines generated from settings classes, and the worker process's ``main``.

Every field of a pydantic-settings class becomes a ``--flag`` (bools ``--x/--no-x``) whose help is the field's
description, so a new setting cannot be forgotten on the command line and its default lives in one place:
a flag that is not given is not passed, and the class reads ``ANYSAT_<FIELD>`` or applies its default.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import types
from collections.abc import Callable, Collection, Sequence
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import redis
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from service.engine.batching import Runner
from service.engine.settings import WorkerSettings

S = TypeVar("S", bound=BaseSettings)
W = TypeVar("W", bound=WorkerSettings)


def _scalar_type(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        (annotation,) = [a for a in get_args(annotation) if a is not type(None)]
    return annotation


def env_name(cls: type[BaseSettings], field: str) -> str:
    return f"{cls.model_config.get('env_prefix', '')}{field}".upper()


def add_flags(parser: argparse._ActionsContainer, cls: type[BaseSettings], skip: Collection[str] = ()) -> None:
    """One ``--flag`` per field of ``cls`` (their defaults stay the class's: unset flags are not passed)."""
    for name, field in cls.model_fields.items():
        if name in skip:
            continue
        default = None if field.is_required() else field.get_default(call_default_factory=False)
        shown = "generated" if field.default_factory is not None else default
        kind = _scalar_type(field.annotation)
        if kind is bool:
            typed: dict[str, Any] = {"action": argparse.BooleanOptionalAction}
        elif get_origin(kind) is tuple:  # comma-separated values, split by the class's own validator
            typed = {"type": str}
        elif get_origin(kind) is Literal:
            typed = {"type": str, "choices": [str(a) for a in get_args(kind)]}
        else:
            typed = {"type": kind}
        parser.add_argument(f"--{name.replace('_', '-')}", **typed, default=None,
                            help=f"{field.description or name} (${env_name(cls, name)}; default: {shown})")


def settings_from_args(cls: type[S], args: argparse.Namespace, **fixed: Any) -> S:
    """``cls`` from the flags given (others from the environment or defaults), plus ``fixed`` values."""
    given = {n: getattr(args, n) for n in cls.model_fields if getattr(args, n, None) is not None}
    return cls(**{**given, **fixed})


def explain(exc: ValidationError, cls: type[BaseSettings]) -> str:
    """A settings error as lines naming each variable: ``ANYSAT_MAX_GRAPHS (--max-graphs): ... got '0'``."""
    lines = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        where = f"{env_name(cls, field)} (--{field.replace('_', '-')})" if field else cls.__name__
        lines.append(f"  {where}: {error['msg']}, got {error.get('input')!r}")
    return "\n".join(lines)


def worker_main(argv: Sequence[str] | None, cls: type[W], prog: str,
                default_runner: Callable[[W], Runner] | None = None) -> int:
    """Parse flags into ``cls`` (a ``WorkerSettings``), build the runner, run one worker until SIGTERM/SIGINT."""
    from service.engine.worker import Worker, load_runner

    parser = argparse.ArgumentParser(prog=prog, description="Run one serving worker on the Redis queue.")
    parser.add_argument("--log-level", default="INFO")
    add_flags(parser, cls)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = settings_from_args(cls, args)
    except ValidationError as exc:
        print(f"{prog}: invalid settings:\n{explain(exc, cls)}", file=sys.stderr)
        return 2
    if not getattr(settings, "redis_url", None):
        print(f"{prog}: no Redis to serve from; set ANYSAT_REDIS_URL or pass --redis-url "
              "(e.g. unix:///run/anysat/redis.sock or redis://127.0.0.1:6379/0)", file=sys.stderr)
        return 2
    spec = getattr(settings, "runner", None)
    if spec is None and default_runner is None:
        print(f"{prog}: no runner; pass --runner package.module:factory (or run `anysat worker`)", file=sys.stderr)
        return 2
    try:
        if spec:
            runner = load_runner(spec, settings)
        else:
            assert default_runner is not None  # refused above
            runner = default_runner(settings)
    except ValidationError as exc:
        print(f"{prog}: invalid settings:\n{explain(exc, cls)}", file=sys.stderr)
        return 2
    worker = Worker(settings, runner)
    if worker.settings.metrics_port is not None:
        worker.metrics.serve(worker.settings.metrics_port)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _signum, _frame: worker.stop())
    try:
        worker.run()
    except redis.RedisError as exc:  # Redis never answered within connect_timeout_s (logged)
        print(f"{prog}: giving up: {exc}", file=sys.stderr)
        return 1
    return 0
