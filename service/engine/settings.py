"""Typed, validated configuration of the queue (shared by callers and workers) and of a worker process.

``QueueSettings`` is what both sides of the queue must agree on; each process builds it from its own settings
class (``WorkerSettings`` here, ``GatewaySettings`` in the gateway), the one place that process reads its
configuration from."""

from __future__ import annotations

import os
import socket
import uuid

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_consumer_name() -> str:
    # Unique per process start: a restarted worker must not inherit a dead one's pending entries
    # by name (they are recovered by reclaim instead, with their delivery count intact).
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class QueueSettings(BaseModel):
    """Where the queue lives in Redis and how it treats requests. Callers and workers must agree."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prefix: str = Field("anysat", min_length=1, description="namespace of every key the engine writes")
    group: str = Field("workers", min_length=1, description="the one consumer group all workers share")
    max_queue_depth: int = Field(10_000, gt=0, description="admission limit: pending + undelivered")
    overload_retry_after_s: float = Field(1.0, gt=0, description="Retry-After hint sent with Overloaded")
    max_deliveries: int = Field(3, ge=1, description="deliveries before an entry is dead-lettered")
    result_ttl_s: float = Field(300.0, gt=0, description="lifetime of an unread reply and its done-marker")
    payload_ttl_margin_s: float = Field(60.0, ge=0, description="payload TTL beyond the request deadline")
    dead_letter_maxlen: int = Field(10_000, gt=0, description="approximate cap of the dead-letter stream")

    @property
    def stream(self) -> str:
        return f"{self.prefix}:requests"

    @property
    def dead_letter_stream(self) -> str:
        return f"{self.prefix}:dead-letter"

    def payload_key(self, request_id: str) -> str:
        return f"{self.prefix}:payload:{request_id}"

    def done_key(self, request_id: str) -> str:
        return f"{self.prefix}:done:{request_id}"

    def reply_key(self, request_id: str) -> str:
        return f"{self.prefix}:reply:{request_id}"

    def heartbeat_key(self, consumer: str) -> str:
        return f"{self.prefix}:worker:{consumer}"


class WorkerSettings(BaseSettings):
    """One worker process; each field is read from ``ANYSAT_<FIELD>`` and has a generated ``--flag``.

    ``redis_url`` has no default: resolve it (env, flag or embedded) explicitly."""

    model_config = SettingsConfigDict(env_prefix="ANYSAT_", frozen=True, extra="forbid")

    redis_url: str | None = Field(None, min_length=1, description="Redis of the queue (required)")
    runner: str | None = Field(
        None, description="'package.module:factory' returning a Runner; unset: the command's own (the AnySat model)")
    # --- the queue, as the workers see it (admission is the gateway's: see GatewaySettings)
    queue_prefix: str = Field("anysat", min_length=1, description="key namespace; must equal the gateway's")
    max_deliveries: int = Field(3, ge=1, description="deliveries of a request before it is dead-lettered")
    result_ttl_s: float = Field(300.0, gt=0, description="lifetime of an unread reply and its done-marker")
    dead_letter_maxlen: int = Field(10_000, gt=0, description="approximate cap of the dead-letter stream")
    # --- batching and the loop
    consumer: str = Field(
        default_factory=default_consumer_name, min_length=1, description="this worker's name in the group"
    )
    max_batch_size: int = Field(32, ge=1, description="most requests per model call")
    max_wait_ms: float = Field(5.0, ge=0, description="how long a partial batch may wait for company")
    adaptive_wait: bool = Field(
        True, description="cut a partial batch at once when its key's requests arrive further apart than max_wait_ms"
    )
    prefetch: int | None = Field(
        None, ge=1, description="requests held locally across keys; default 4 x max_batch_size"
    )
    read_block_ms: int = Field(500, ge=1, description="longest blocking read; bounds shutdown latency")
    reclaim_idle_ms: int = Field(15_000, ge=1, description="idle time after which an entry is reclaimed")
    reclaim_interval_ms: int = Field(2_000, ge=1, description="how often to look for such entries")
    heartbeat_interval_s: float = Field(2.0, gt=0, description="heartbeat and lease-renewal period")
    heartbeat_ttl_s: float = Field(10.0, gt=0, description="a worker silent this long counts as dead")
    metrics_port: int | None = Field(None, ge=0, le=65535, description="serve /metrics here if set")
    connect_timeout_s: float = Field(
        300.0, ge=0, description="at start, how long to retry until Redis answers (0: fail at once)")

    @property
    def queue(self) -> QueueSettings:
        return QueueSettings(prefix=self.queue_prefix, max_deliveries=self.max_deliveries,
                             result_ttl_s=self.result_ttl_s, dead_letter_maxlen=self.dead_letter_maxlen)

    @model_validator(mode="after")
    def _check_timing(self) -> WorkerSettings:
        # Leases are renewed once per heartbeat; an idle threshold shorter than that would let
        # live workers' entries be stolen and run twice.
        if self.reclaim_idle_ms <= 2_000 * self.heartbeat_interval_s:
            raise ValueError(
                f"reclaim_idle_ms ({self.reclaim_idle_ms}) must exceed twice heartbeat_interval_s "
                f"({self.heartbeat_interval_s} s) or live workers' entries get reclaimed"
            )
        if self.heartbeat_ttl_s <= self.heartbeat_interval_s:
            raise ValueError("heartbeat_ttl_s must exceed heartbeat_interval_s")
        return self

    @property
    def effective_prefetch(self) -> int:
        return self.prefetch if self.prefetch is not None else 4 * self.max_batch_size
