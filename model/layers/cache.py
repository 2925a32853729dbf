"""Per-configuration constants (positional tables, RPE buckets), computed once and reused."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from functools import wraps
from typing import TypeVar

import torch

T = TypeVar("T")


def constant_cache(fn: Callable[..., T]) -> Callable[..., T]:
    """Memoise on the (hashable) arguments, but never store what a tracer made: under
    ``torch.export``/``torch.compile`` new tensors are fake. Export runs the configuration
    eagerly first, so traced calls hit the cache and the tables enter the graph as constants."""
    store: dict[tuple[Hashable, ...], T] = {}

    @wraps(fn)
    def wrapper(*args: Hashable) -> T:
        if args in store:
            return store[args]
        value = fn(*args)
        if not (torch.compiler.is_compiling() or torch.compiler.is_exporting()):
            store[args] = value
        return value

    wrapper.cache_clear = store.clear  # type: ignore[attr-defined]
    return wrapper
