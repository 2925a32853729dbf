"""Runs scene jobs inside a gateway process: takes active jobs whose lease is free (new ones, and those whose
gateway died), runs each through the scene pipeline with its tiles on the worker queue, and records progress.

Exactly one gateway runs a job at a time (the lease); each renews its leases every third of ``job_lease_s`` and
stops a job whose lease it lost. A job taken over resumes from the pipeline's journal in its directory (the jobs
directory is shared by all gateways), so finished tile rows are not run again."""

from __future__ import annotations

import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis
from rasterio.errors import RasterioError

from scene.errors import SceneError
from service.engine.producer import Producer
from service.gateway.errors import ApiError
from service.gateway.jobs.executor import QueueExecutor, Stopped
from service.gateway.jobs.spec import JobSpec, scene_job
from service.gateway.jobs.store import CANCELLED, DONE, FAILED, JobRecord, JobStore
from service.gateway.scenes.job import SceneLimits
from service.gateway.scenes.pipeline import run_scene, state_dir
from service.gateway.scenes.plan import ScenePlan, plan_scene
from service.gateway.settings import GatewaySettings

log = logging.getLogger("anysat.jobs")

_PROGRESS_EVERY_S = 0.25


def job_limits(settings: GatewaySettings) -> SceneLimits:
    return SceneLimits(settings.max_job_area_km2, settings.max_job_tiles, settings.max_job_in_flight_tiles)


def plan_job(settings: GatewaySettings, spec: JobSpec, files: dict[str, list[str]], job_dir: Path) -> ScenePlan:
    """Check a job and lay it out (raises ``SceneError`` / ``ApiError`` naming the field at fault)."""
    return plan_scene(scene_job(spec, files, job_dir), checkpoint=settings.resolved_checkpoint(),
                      heads_dir=settings.resolved_heads_dir(), limits=job_limits(settings), settings=settings)


def job_dir(settings: GatewaySettings, job_id: str) -> Path:
    return settings.jobs_dir / job_id


@dataclass
class _Running:
    thread: threading.Thread
    stop: threading.Event


class JobCoordinator:
    def __init__(self, store: JobStore, producer: Callable[[], Producer], settings: GatewaySettings) -> None:
        self.store = store
        self.producer = producer
        self.settings = settings
        self.owner = uuid.uuid4().hex[:12]
        self._running: dict[str, _Running] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- lifecycle
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="jobs", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop taking jobs and hand back the running ones (another gateway, or this one restarted, resumes)."""
        self._stop.set()
        with self._lock:
            running = list(self._running.values())
        for r in running:
            r.stop.set()
        for r in running:
            r.thread.join(timeout_s)
        if self._thread is not None:
            self._thread.join(timeout_s)

    def running(self) -> list[str]:
        with self._lock:
            return sorted(self._running)

    # --- taking jobs
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except redis.RedisError as exc:
                log.warning("jobs: Redis unreachable (%s); retrying", type(exc).__name__)
            self._stop.wait(self.settings.job_poll_s)

    def poll(self) -> None:
        with self._lock:
            for job_id in [j for j, r in self._running.items() if not r.thread.is_alive()]:
                del self._running[job_id]
            free = self.settings.max_jobs_running - len(self._running)
        if free <= 0:
            return
        for job_id in self.store.active():
            if free <= 0 or self._stop.is_set():
                break
            with self._lock:
                if job_id in self._running:
                    continue
            if not self.store.claim(job_id, self.owner, self.settings.job_lease_s):
                continue
            stop = threading.Event()
            thread = threading.Thread(target=self._run, args=(job_id, stop), name=f"job-{job_id}", daemon=True)
            with self._lock:
                self._running[job_id] = _Running(thread, stop)
            thread.start()
            free -= 1

    # --- running one
    def _renew(self, job_id: str, stop: threading.Event, lost: threading.Event) -> None:
        every = self.settings.job_lease_s / 3
        while not stop.wait(every):
            try:
                if not self.store.renew(job_id, self.owner, self.settings.job_lease_s):
                    log.warning("job %s: lease lost; stopping (another gateway may own it now)", job_id)
                    lost.set()
                    return
            except redis.RedisError:
                pass  # the lease may outlive a short outage; if it does not, the next renew says so

    def _run(self, job_id: str, stop: threading.Event) -> None:
        lost = threading.Event()
        done_renewing = threading.Event()
        renewer = threading.Thread(target=self._renew, args=(job_id, done_renewing, lost), daemon=True,
                                   name=f"job-{job_id}-lease")
        renewer.start()
        try:
            record = self.store.get(job_id)
            if record is None:
                return
            self._execute(record, stop, lost)
        except redis.RedisError as exc:
            # The record cannot be updated now; the lease expires and the job is resumed once Redis is back.
            log.warning("job %s: Redis unreachable (%s); left for a later resume", job_id, type(exc).__name__)
        finally:
            done_renewing.set()
            renewer.join(5)

    def _execute(self, record: JobRecord, stop: threading.Event, lost: threading.Event) -> None:
        job_id = record.id
        where = job_dir(self.settings, job_id)
        cancelled = threading.Event()
        last = {"progress": 0.0, "cancel": time.monotonic()}

        def should_stop() -> bool:
            now = time.monotonic()
            if now - last["cancel"] >= _PROGRESS_EVERY_S:
                last["cancel"] = now
                if self.store.cancel_requested(job_id):
                    cancelled.set()
            return stop.is_set() or lost.is_set() or cancelled.is_set()

        def progress(done: int, total: int) -> None:
            now = time.monotonic()
            if now - last["progress"] >= _PROGRESS_EVERY_S or done == total:
                last["progress"] = now
                if self.store.progress(job_id, done):
                    cancelled.set()
            if should_stop():
                raise Stopped(job_id)

        try:
            plan = plan_job(self.settings, JobSpec.model_validate(record.spec), record.extra.get("files", {}), where)
            self.store.run_started(job_id, record.tiles_done, plan.grid.n_tiles)
            executor = QueueExecutor(self.producer(), job_id, deadline_s=self.settings.job_tile_deadline_s,
                                     attempts=self.settings.job_tile_attempts, should_stop=should_stop)
            result = run_scene(plan, executor, batch_size=self.settings.job_batch_size, resume=True,
                               progress=progress, limits=job_limits(self.settings))
        except Stopped:
            if cancelled.is_set() or record.cancel:
                shutil.rmtree(state_dir(Path(record.out)), ignore_errors=True)
                self.store.finish(job_id, CANCELLED)
                log.info("job %s: cancelled", job_id)
            elif not lost.is_set():
                self.store.release(job_id, self.owner)  # shutting down: free for the next gateway at once
            return
        except (SceneError, ApiError) as exc:
            field = getattr(exc, "field", "job")
            message = getattr(exc, "message", str(exc))
            self.store.finish(job_id, FAILED, {"code": "bad_request", "field": field, "message": message})
            log.info("job %s: failed: %s: %s", job_id, field, message)
            return
        except redis.RedisError:
            raise
        except RasterioError as exc:  # a file that opened at submit but whose pixels cannot be read
            message = str(exc).replace(str(where / "inputs") + "/", "")
            self.store.finish(job_id, FAILED, {"code": "unreadable_input", "field": "sensors", "message": message})
            log.info("job %s: failed reading its inputs: %s", job_id, exc)
            return
        except Exception as exc:
            log.exception("job %s: internal error", job_id)
            self.store.finish(job_id, FAILED, {"code": "internal_error", "field": "job",
                                               "message": f"{type(exc).__name__} (see the gateway's log)"})
            return
        self.store.finish(job_id, DONE, extra={
            "tiles_run": result.tiles_run, "tiles_skipped": result.tiles_skipped,
            "tiles_resumed": result.tiles_resumed, "tiles_requeued": executor.requeued,
            "seconds": round(result.seconds, 3), "bytes": result.out.stat().st_size})
        log.info("job %s: done, %d tiles in %.1f s", job_id, result.tiles_total, result.seconds)
