"""The embedded default: a private redis-server when no URL is configured, the URL when it is."""

from __future__ import annotations

import os

import redis

from service.engine.redis_server import ENV_URL, EmbeddedRedis, redis_url


def test_configured_url_is_used_and_nothing_started() -> None:
    with redis_url({ENV_URL: "redis://127.0.0.1:6390/2"}) as url:
        assert url == "redis://127.0.0.1:6390/2"


def test_embedded_server_is_private_real_and_stopped_on_exit() -> None:
    server = EmbeddedRedis()
    with server as url:
        assert url.startswith("unix://")
        client = redis.Redis.from_url(url)
        assert client.ping()
        assert client.config_get("port") == {"port": "0"}  # no TCP listener
        assert client.config_get("save") == {"save": ""}  # nothing persisted
        assert oct(server.socket_path.stat().st_mode & 0o777) == "0o700"
        pid = server.pid
        client.close()
    assert pid is not None
    assert not server.directory.exists()
    try:
        os.kill(pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive, "redis-server still running after stop"


def test_url_without_env_starts_embedded() -> None:
    with redis_url({}) as url:
        assert redis.Redis.from_url(url).ping()
