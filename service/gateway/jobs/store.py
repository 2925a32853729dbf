"""Scene jobs' state in Redis, shared by every gateway: the record, the set of active jobs, and one lease per
running job, so that exactly one gateway runs a job and another takes it over when its owner dies.

Keys (``<prefix>`` is the queue prefix): ``<prefix>:job:<id>`` a hash (the record), ``<prefix>:job:<id>:lease`` the
owner's id with a TTL, ``<prefix>:jobs:active`` the ids of jobs queued or running. A finished record expires
``ttl_s`` after it finished."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, cast

import redis

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
ACTIVE = (QUEUED, RUNNING)

# Take a job if nobody holds its lease; renew only a lease we hold (a gateway that lost its lease, e.g. while
# Redis was away, must stop rather than write beside the new owner).
_CLAIM = """
if redis.call('HGET', KEYS[1], 'state') ~= 'queued' and redis.call('HGET', KEYS[1], 'state') ~= 'running' then
  return 0 end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'state', 'running', 'owner', ARGV[1], 'updated', ARGV[3])
redis.call('HSETNX', KEYS[1], 'started', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
return 1
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


@dataclass
class JobRecord:
    id: str
    state: str
    spec: dict[str, Any]
    out: str
    created: float
    updated: float
    tiles_total: int = 0
    tiles_done: int = 0
    started: float | None = None
    finished: float | None = None
    error: dict[str, Any] | None = None
    cancel: bool = False
    attempts: int = 0
    # progress of the current run, for the ETA: tiles done when it started, and when
    run_start_done: int = 0
    run_start_at: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def eta_s(self, now: float | None = None) -> float | None:
        """Seconds left at the current run's rate; None before two tiles of the run are in."""
        if self.state != RUNNING or self.run_start_at is None:
            return None
        done = self.tiles_done - self.run_start_done
        elapsed = (now or time.time()) - self.run_start_at
        if done < 2 or elapsed <= 0:
            return None
        return max(0.0, (self.tiles_total - self.tiles_done) * elapsed / done)

    def public(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id, "state": self.state, "tiles_done": self.tiles_done, "tiles_total": self.tiles_total,
            "progress": self.tiles_done / self.tiles_total if self.tiles_total else 0.0, "eta_s": self.eta_s(),
            "created": self.created, "started": self.started, "finished": self.finished, "error": self.error,
            "attempts": self.attempts, "output": self.spec.get("output", "dense"),
        }
        body.update(self.extra)
        return body


def _f(v: Any) -> float | None:
    return float(v) if v not in (None, "") else None


class JobStore:
    def __init__(self, client: redis.Redis, prefix: str, *, ttl_s: float) -> None:
        self.redis = client
        self.prefix = prefix
        self.ttl_s = ttl_s
        self._claim = client.register_script(_CLAIM)
        self._renew = client.register_script(_RENEW)

    def _key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def _lease(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:lease"

    @property
    def _active(self) -> str:
        return f"{self.prefix}:jobs:active"

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex[:16]

    def create(self, job_id: str, spec: dict[str, Any], out: str, tiles_total: int,
               extra: dict[str, Any] | None = None) -> JobRecord:
        now = time.time()
        fields: dict[Any, Any] = {"id": job_id, "state": QUEUED, "spec": json.dumps(spec), "out": out, "created": now,
                  "updated": now, "tiles_total": tiles_total, "tiles_done": 0, "attempts": 0,
                  "extra": json.dumps(extra or {})}
        pipe = self.redis.pipeline()
        pipe.hset(self._key(job_id), mapping=fields)
        pipe.sadd(self._active, job_id)
        pipe.execute()
        record = self.get(job_id)
        assert record is not None
        return record

    def get(self, job_id: str) -> JobRecord | None:
        raw = cast(dict[bytes, bytes], self.redis.hgetall(self._key(job_id)))
        if not raw:
            return None
        h = {k.decode(): v.decode() for k, v in raw.items()}
        return JobRecord(
            id=h["id"], state=h["state"], spec=json.loads(h["spec"]), out=h["out"], created=float(h["created"]),
            updated=float(h["updated"]), tiles_total=int(h.get("tiles_total", 0)),
            tiles_done=int(h.get("tiles_done", 0)), started=_f(h.get("started")), finished=_f(h.get("finished")),
            error=json.loads(h["error"]) if h.get("error") else None, cancel=h.get("cancel") == "1",
            attempts=int(h.get("attempts", 0)), run_start_done=int(h.get("run_start_done", 0)),
            run_start_at=_f(h.get("run_start_at")), extra=json.loads(h.get("extra", "{}")))

    def active(self) -> list[str]:
        return sorted(m.decode() for m in cast(set[bytes], self.redis.smembers(self._active)))

    def claim(self, job_id: str, owner: str, lease_s: float) -> bool:
        now = time.time()
        return bool(self._claim(keys=[self._key(job_id), self._lease(job_id)],
                                args=[owner, int(lease_s * 1000), repr(now)]))

    def renew(self, job_id: str, owner: str, lease_s: float) -> bool:
        return bool(self._renew(keys=[self._lease(job_id)], args=[owner, int(lease_s * 1000)]))

    def release(self, job_id: str, owner: str) -> None:
        if self.redis.get(self._lease(job_id)) == owner.encode():
            self.redis.delete(self._lease(job_id))

    def run_started(self, job_id: str, tiles_done: int, tiles_total: int) -> None:
        self.redis.hset(self._key(job_id), mapping={"run_start_done": tiles_done, "run_start_at": time.time(),
                                                    "tiles_done": tiles_done, "tiles_total": tiles_total,
                                                    "updated": time.time()})

    def progress(self, job_id: str, tiles_done: int) -> bool:
        """Record progress; returns whether a cancel was asked for."""
        pipe = self.redis.pipeline()
        pipe.hset(self._key(job_id), mapping={"tiles_done": tiles_done, "updated": time.time()})
        pipe.hget(self._key(job_id), "cancel")
        return pipe.execute()[1] == b"1"

    def cancel_requested(self, job_id: str) -> bool:
        return self.redis.hget(self._key(job_id), "cancel") == b"1"

    def finish(self, job_id: str, state: str, error: dict[str, Any] | None = None,
               extra: dict[str, Any] | None = None) -> None:
        now = time.time()
        fields: dict[Any, Any] = {"state": state, "finished": now, "updated": now}
        if error is not None:
            fields["error"] = json.dumps(error)
        if extra is not None:
            current = self.get(job_id)
            fields["extra"] = json.dumps({**(current.extra if current else {}), **extra})
        pipe = self.redis.pipeline()
        pipe.hset(self._key(job_id), mapping=fields)
        pipe.srem(self._active, job_id)
        pipe.expire(self._key(job_id), int(self.ttl_s))
        pipe.delete(self._lease(job_id))
        pipe.execute()

    def request_cancel(self, job_id: str) -> None:
        """A queued job is cancelled at once; a running one by its owner at its next tile."""
        self.redis.hset(self._key(job_id), "cancel", "1")
        record = self.get(job_id)
        if record is not None and record.state == QUEUED and not self.redis.exists(self._lease(job_id)):
            self.finish(job_id, CANCELLED)

    def delete(self, job_id: str) -> None:
        pipe = self.redis.pipeline()
        pipe.delete(self._key(job_id), self._lease(job_id))
        pipe.srem(self._active, job_id)
        pipe.execute()

    def lease_holder(self, job_id: str) -> str | None:
        held = self.redis.get(self._lease(job_id))
        return cast(bytes, held).decode() if held else None
