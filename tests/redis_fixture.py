"""Real-Redis fixtures: one private redis-server per test session, a fresh key prefix per test.

No Redis mocks anywhere: the server is the embedded default from ``service.engine.redis_server``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from service.engine.connection import connect
from service.engine.redis_server import EmbeddedRedis


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a redis-server started for this session (never $ANYSAT_REDIS_URL: tests own it)."""
    with EmbeddedRedis() as url:
        yield url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = connect(redis_url)  # the engine's client setup (hiredis parser, Python packer)
    yield client
    client.close()


@pytest.fixture
def key_prefix() -> str:
    """A namespace of its own per test, so tests sharing the server never see each other's keys."""
    return f"t{uuid.uuid4().hex[:10]}"
