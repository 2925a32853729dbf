"""``/v1/jobs`` end to end: a real gateway over HTTP, the session's real Redis, real worker threads running the
demo encoder. A job posted by path or by upload gives the same output as ``anysat predict`` in this process;
bad jobs are refused before any work with the field named; a job is cancelled; a job left by a gateway that
stopped is resumed by the next one without redoing finished tile rows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import rasterio
import redis
from gateway_fixtures import running, serving, wait_ready
from rio_cogeo.cogeo import cog_validate
from scene_fixtures import CHECKPOINT, HEADS, LANDSAT, REPO, write

from scene import parse_sources
from service.gateway.app import create_app
from service.gateway.scenes import InProcessExecutor, SceneJob, plan_scene, run_scene
from service.gateway.settings import GatewaySettings
from service.runtime.runner import ModelRunner


@pytest.fixture(scope="module")
def runner() -> ModelRunner:
    return ModelRunner.from_checkpoint(CHECKPOINT, heads_dir=HEADS)


def crop(directory: Path, name: str = "LC08_224078_20200518_crop.tif", size: int = 20) -> Path:
    """A window of the shipped Landsat crop (B2, B3, B4; 30 m), as its own GeoTIFF."""
    directory.mkdir(parents=True, exist_ok=True)
    with rasterio.open(LANDSAT) as src:
        window = rasterio.windows.Window(200, 150, size, size)
        data, tf, crs = src.read(window=window), src.window_transform(window), src.crs
    return write(directory / name, data, crs, tf)


def settings_for(redis_url: str, tmp: Path, **kw: Any) -> GatewaySettings:
    base: dict[str, Any] = dict(redis_url=redis_url, queue_prefix=f"j{uuid.uuid4().hex[:8]}", checkpoint=CHECKPOINT,
                                heads_dir=HEADS, job_roots=(tmp / "data",), jobs_dir=tmp / "jobs", job_poll_s=0.05,
                                job_lease_s=2.0, job_batch_size=4)
    base.update(kw)
    return GatewaySettings(**base, _env_file=None)  # type: ignore[call-arg]


SPEC = {"dates": {"l8": "2020-05-18"}, "bands": {"l8": "B2,B3,B4"}, "head": "landcover", "output": "patch",
        "tile_size": 240, "overlap": 60}


def wait_state(url: str, job_id: str, states: tuple[str, ...], timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=10).json()
        if body["state"] in states:
            return body
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} stayed {body['state']}: {body}")


def tiles_of(path: Path) -> int:
    """How many tiles the job cuts from ``path``, from the grid plan_scene lays out (what the job must report)."""
    sources = parse_sources({"l8": str(path)}, {"l8": "2020-05-18"}, {"l8": "B2,B3,B4"})
    plan = plan_scene(SceneJob(sources, path.with_suffix(".out.tif"), "patch", "landcover", 240, 60),
                      checkpoint=CHECKPOINT, heads_dir=HEADS)
    return plan.grid.n_tiles


def in_process(runner: ModelRunner, path: Path, out: Path) -> np.ndarray:
    sources = parse_sources({"l8": str(path)}, {"l8": "2020-05-18"}, {"l8": "B2,B3,B4"})
    job = SceneJob(sources, out, "patch", "landcover", 240, 60)
    result = run_scene(plan_scene(job, checkpoint=CHECKPOINT, heads_dir=HEADS), InProcessExecutor(runner),
                       batch_size=4)
    with rasterio.open(result.out) as src:
        return src.read()


def fetch(url: str, job_id: str, out: Path) -> np.ndarray:
    r = httpx.get(f"{url}/v1/jobs/{job_id}/result", timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("image/tiff")
    out.write_bytes(r.content)
    assert cog_validate(out, quiet=True)[0]
    with rasterio.open(out) as src:
        assert src.crs.to_epsg() == 32621
        return src.read()


def test_job_by_path_and_by_upload_equal_anysat_predict(redis_url: str, runner: ModelRunner, tmp_path: Path
                                                        ) -> None:
    path = crop(tmp_path / "data")
    expected = in_process(runner, path, tmp_path / "local.tif")
    n = tiles_of(path)
    assert n > 1
    with running(settings_for(redis_url, tmp_path), runner, workers=2) as svc:
        r = httpx.post(f"{svc.url}/v1/jobs", json={**SPEC, "sensors": {"l8": [path.name]}}, timeout=30)
        assert r.status_code == 202, r.text
        job = r.json()
        assert r.headers["location"] == f"/v1/jobs/{job['id']}" and job["tiles_total"] == n
        done = wait_state(svc.url, job["id"], ("done", "failed"))
        assert done["state"] == "done", done
        assert done["tiles_done"] == done["tiles_total"] == done["tiles_run"] == n
        np.testing.assert_allclose(fetch(svc.url, job["id"], tmp_path / "by_path.tif"), expected, rtol=1e-4,
                                   atol=1e-5)

        with path.open("rb") as f:
            r = httpx.post(f"{svc.url}/v1/jobs", data={"job": json.dumps(SPEC)},
                           files={"l8": (path.name, f, "image/tiff")}, timeout=30)
        assert r.status_code == 202, r.text
        done = wait_state(svc.url, r.json()["id"], ("done", "failed"))
        assert done["state"] == "done", done
        np.testing.assert_allclose(fetch(svc.url, done["id"], tmp_path / "by_upload.tif"), expected, rtol=1e-4,
                                   atol=1e-5)

        # Deleting a finished job removes its record and its files.
        assert httpx.delete(f"{svc.url}/v1/jobs/{done['id']}", timeout=10).status_code == 204
        assert httpx.get(f"{svc.url}/v1/jobs/{done['id']}", timeout=10).status_code == 404
        assert not (tmp_path / "jobs" / done["id"]).exists()


def error_of(r: httpx.Response) -> dict[str, Any]:
    return r.json()["error"]


def test_bad_jobs_are_refused_before_any_work(redis_url: str, runner: ModelRunner, tmp_path: Path) -> None:
    path = crop(tmp_path / "data")
    outside = crop(tmp_path / "elsewhere")
    far = tmp_path / "data" / "far.tif"
    with rasterio.open(path) as src:
        tf = src.transform
        write(far, src.read(), src.crs, rasterio.Affine(tf.a, 0, tf.c + 100_000, 0, tf.e, tf.f))
    settings = settings_for(redis_url, tmp_path, max_job_area_km2=0.1)
    with running(settings, runner, workers=0) as svc:
        def post(spec: dict[str, Any]) -> httpx.Response:
            return httpx.post(f"{svc.url}/v1/jobs", json=spec, timeout=30)

        cases = [
            ({**SPEC, "sensors": {"l8": [str(outside)]}}, 422, "sensors.l8", "outside the job roots"),
            ({**SPEC, "sensors": {"l8": ["../elsewhere/*.tif"]}}, 422, "sensors.l8", "outside the job roots"),
            ({**SPEC, "sensors": {"l8": ["nothing-*.tif"]}}, 422, "sensors.l8", "matches no file"),
            ({**SPEC, "sensors": {"l8": [path.name]}, "masks": {"l8": [str(outside)]}}, 422, "masks.l8", "outside"),
            ({**SPEC, "sensors": {"l8": [path.name, far.name]}, "dates": {"l8": "2020-05-18,2020-06-03"}}, 422, None,
             "overlap"),
            ({**SPEC, "sensors": {"l8": [path.name]}, "output": "cube"}, 422, "output", ""),
            ({**SPEC, "sensors": {"l8": [path.name]}, "head": "nope"}, 404, "head", "nope"),  # as /v1/masks
            ({**SPEC, "sensors": {}}, 422, "sensors", "no sensor given"),
            ({**SPEC, "sensors": {"l8": [path.name]}, "aoi": str(outside)}, 422, "aoi", "outside the job roots"),
            ({**SPEC, "sensors": {"l8": [path.name]}, "aoi": path.name}, 422, "aoi", "not a readable vector file"),
        ]
        for spec, status, field, words in cases:
            r = post(spec)
            assert r.status_code == status, (spec, r.text)
            if field is not None:
                assert error_of(r)["field"] == field, r.text
            assert words in error_of(r)["message"], r.text
        big = crop(tmp_path / "data", "LC08_224078_20200518_big.tif", size=40)  # 1.44 km2 > 0.1 km2
        r = post({**SPEC, "sensors": {"l8": [big.name]}})
        assert r.status_code == 413 and error_of(r)["limit"] == "max_job_area_km2", r.text
        r = httpx.post(f"{svc.url}/v1/jobs", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400 and error_of(r)["field"] == "job"
        assert httpx.get(f"{svc.url}/v1/jobs/0123456789abcdef").status_code == 404
        assert httpx.get(f"{svc.url}/v1/jobs/..%2F..%2Fetc").status_code == 404
        # Nothing was queued and no job directory was left behind.
        assert not any((tmp_path / "jobs").iterdir()) if (tmp_path / "jobs").exists() else True
        assert svc.app.state.gateway.jobs().active() == []


def test_cancel_a_running_job(redis_url: str, runner: ModelRunner, tmp_path: Path) -> None:
    path = crop(tmp_path / "data")
    with running(settings_for(redis_url, tmp_path), runner, workers=0) as svc:  # no worker: tiles wait queued
        r = httpx.post(f"{svc.url}/v1/jobs", json={**SPEC, "sensors": {"l8": [path.name]}}, timeout=30)
        job_id = r.json()["id"]
        wait_state(svc.url, job_id, ("running",))
        assert httpx.get(f"{svc.url}/v1/jobs/{job_id}/result").status_code == 409
        r = httpx.delete(f"{svc.url}/v1/jobs/{job_id}", timeout=10)
        assert r.status_code == 202
        body = wait_state(svc.url, job_id, ("cancelled",), timeout_s=10)
        assert body["tiles_done"] < body["tiles_total"]
        assert not list((tmp_path / "jobs" / job_id).glob("result*"))


def test_a_job_left_by_a_stopped_gateway_is_resumed_by_the_next(redis_url: str, runner: ModelRunner,
                                                                 tmp_path: Path) -> None:
    """Gateway A takes the job and is stopped after some tile rows; gateway B (same Redis, same jobs directory)
    takes it over, resumes from the journal, and the output equals an undisturbed run."""
    path = crop(tmp_path / "data", size=30)  # 5 x 5 tiles of 240 m
    sources = parse_sources({"l8": str(path)}, {"l8": "2020-05-18"}, {"l8": "B2,B3,B4"})
    plan = plan_scene(SceneJob(sources, tmp_path / "local.tif", "patch", "landcover", 240, 60),
                      checkpoint=CHECKPOINT, heads_dir=HEADS)
    with rasterio.open(run_scene(plan, InProcessExecutor(runner), batch_size=4).out) as src:
        expected = src.read()
    settings = settings_for(redis_url, tmp_path, job_batch_size=1)
    with running(settings, runner, workers=1) as a:
        r = httpx.post(f"{a.url}/v1/jobs", json={**SPEC, "sensors": {"l8": [path.name]}}, timeout=30)
        job_id = r.json()["id"]
        deadline = time.monotonic() + 60
        while httpx.get(f"{a.url}/v1/jobs/{job_id}").json()["tiles_done"] < 6:  # past the first tile row
            assert time.monotonic() < deadline
            time.sleep(0.02)
    # A stopped: the job is still running on record, its lease handed back.
    b_app = create_app(settings)
    a.workers.start(1)
    try:
        with serving(b_app) as url:
            wait_ready(url)
            done = wait_state(url, job_id, ("done", "failed"))
            assert done["state"] == "done", done
            assert done["attempts"] == 2 and done["tiles_resumed"] >= 4, done
            np.testing.assert_allclose(fetch(url, job_id, tmp_path / "resumed.tif"), expected, rtol=1e-4, atol=1e-5)
    finally:
        a.workers.stop()


def _worker_process(redis_url: str, prefix: str, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "service.runtime.worker", "--redis-url", redis_url, "--queue-prefix", prefix,
           "--checkpoint", str(CHECKPOINT), "--heads-dir", str(HEADS), "--runtime", "eager", "--max-batch-size", "2",
           "--reclaim-idle-ms", "3000", "--reclaim-interval-ms", "500", "--heartbeat-interval-s", "0.5",
           "--heartbeat-ttl-s", "2"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANYSAT_")}
    with log.open("wb") as out:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_a_job_survives_a_worker_killed_mid_job(redis_url: str, runner: ModelRunner, tmp_path: Path) -> None:
    """Two real worker processes; one is SIGKILLed while it holds tiles of the job. Its tiles are reclaimed by
    the other worker, every tile is written once, and the output equals an undisturbed run."""
    path = crop(tmp_path / "data", size=30)  # 5 x 5 tiles of 240 m
    expected = in_process(runner, path, tmp_path / "local.tif")
    settings = settings_for(redis_url, tmp_path, job_batch_size=4)
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    workers = [_worker_process(redis_url, settings.queue_prefix, log) for log in logs]
    app = create_app(settings)
    try:
        with serving(app) as url:
            wait_ready(url, timeout_s=120)
            r = httpx.post(f"{url}/v1/jobs", json={**SPEC, "sensors": {"l8": [path.name]}}, timeout=30)
            job_id = r.json()["id"]
            deadline = time.monotonic() + 120
            while httpx.get(f"{url}/v1/jobs/{job_id}").json()["tiles_done"] < 2:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            # Killed while it holds tiles of the job (delivered to it, not yet answered).
            client = redis.Redis.from_url(redis_url)
            dead = f"-{workers[0].pid}-"
            while not any(dead in c["name"].decode() and c["pending"] > 0
                          for c in client.xinfo_consumers(settings.queue.stream, settings.queue.group)):
                assert time.monotonic() < deadline
                time.sleep(0.005)
            workers[0].send_signal(signal.SIGKILL)
            workers[0].wait(10)
            done = wait_state(url, job_id, ("done", "failed"), timeout_s=180)
            assert done["state"] == "done", done
            assert done["tiles_run"] == done["tiles_total"] == tiles_of(path), done
            np.testing.assert_allclose(fetch(url, job_id, tmp_path / "out.tif"), expected, rtol=1e-4, atol=1e-5)
    finally:
        for w in workers:
            if w.poll() is None:
                w.terminate()
                w.wait(30)


def test_client_predict_uploads_follows_and_downloads(redis_url: str, runner: ModelRunner, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from service.client import AnySatClient, BadInput, JobFailed

    path = crop(tmp_path / "data")
    expected = in_process(runner, path, tmp_path / "local.tif")
    with running(settings_for(redis_url, tmp_path), runner, workers=1) as svc, AnySatClient(svc.url) as client:
        spec = dict(SPEC)
        job = client.predict({"l8": path}, out=tmp_path / "client.tif", poll_s=0.05, **spec)
        n = tiles_of(path)
        assert job["state"] == "done" and job["tiles_done"] == n
        with rasterio.open(tmp_path / "client.tif") as src:
            np.testing.assert_allclose(src.read(), expected, rtol=1e-4, atol=1e-5)
        assert f"{n}/{n}" in capsys.readouterr().err  # the progress bar (tqdm, or the plain line without it)
        job = client.predict({"l8": path.name}, out=tmp_path / "by_path.tif", upload=False, progress=False,
                             poll_s=0.05, **spec)
        assert job["state"] == "done"
        with pytest.raises(BadInput) as err:
            client.submit_job({"l8": "/etc/passwd"}, upload=False, **spec)
        assert err.value.field == "sensors.l8"
        with pytest.raises(BadInput) as err:  # refused at submit, naming the upload, not the server's path
            client.submit_job({"l8": path}, **{**spec, "bands": {"l8": "B2,B3,B4,B5,B6"}})
        assert err.value.field == "sensor.l8" and str(tmp_path) not in err.value.message
        # A file whose header reads but whose pixels are cut off fails while the job runs.
        cut = tmp_path / "cut" / path.name
        cut.parent.mkdir()
        cut.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
        with pytest.raises(JobFailed) as failed:
            client.predict({"l8": cut}, out=tmp_path / "never.tif", progress=False, poll_s=0.05, **spec)
        assert failed.value.job["state"] == "failed"
        assert failed.value.job["error"]["code"] == "unreadable_input", failed.value.job
        assert str(tmp_path) not in failed.value.job["error"]["message"]
        assert not (tmp_path / "never.tif").exists()
