"""``/v1/jobs``: scenes and regions through the worker fleet. A job is checked and laid out when it is posted
(every bad input a 4xx before any work), then run by a gateway's job coordinator; clients poll its state and
fetch the result (a Cloud-Optimized GeoTIFF or GeoParquet) when it is done."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from scene.errors import SceneError, SceneLimitError
from service.gateway.api.deps import ApiKey, GatewayDep
from service.gateway.errors import ApiError, Conflict, InputError, LimitExceeded, MalformedRequest, NotFound
from service.gateway.jobs.coordinator import job_dir, plan_job
from service.gateway.jobs.spec import MASK_SUFFIX, MEDIA_TYPE, JobSpec, resolve_paths
from service.gateway.jobs.store import ACTIVE, DONE
from service.gateway.state import Gateway

router = APIRouter(tags=["jobs"], dependencies=[ApiKey])

_ID = re.compile(r"^[0-9a-f]{16}$")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


# The pipeline names its limits as `anysat predict` does; the gateway's settings carry a job_ prefix.
_LIMIT_SETTING = {"max_area_km2": "max_job_area_km2", "max_tiles": "max_job_tiles"}


def _api_error(exc: SceneError, where: Path) -> ApiError:
    # Uploads are named as the client sent them, not by where this server keeps them.
    message = re.sub(re.escape(str(where / "inputs")) + r"/[^/]+/", "", exc.message)
    if isinstance(exc, SceneLimitError):
        return LimitExceeded(_LIMIT_SETTING.get(exc.limit, exc.limit), exc.field, message)
    return InputError(exc.field, message)


def _spec(raw: bytes | str) -> JobSpec:
    try:
        return JobSpec.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first.get("loc", ())) or "job"
        if first.get("type") == "json_invalid":
            raise MalformedRequest("job", f"not JSON: {first.get('msg')}") from None
        raise InputError(field, str(first.get("msg"))) from None


async def _save_uploads(form: Any, inputs: Path) -> dict[str, list[str]]:
    files: dict[str, list[str]] = {}
    for name, value in form.multi_items():
        if not isinstance(value, UploadFile):
            continue
        # One directory per sensor, file names kept (dates may come from them) but reduced to safe characters.
        base = _SAFE_NAME.sub("_", Path(value.filename or f"{name}.tif").name) or f"{name}.tif"
        sensor_dir = inputs / _SAFE_NAME.sub("_", name)
        sensor_dir.mkdir(parents=True, exist_ok=True)
        target = sensor_dir / base
        if target.exists():
            raise InputError(name, f"two uploads named {base!r}")
        with target.open("wb") as out:
            await run_in_threadpool(shutil.copyfileobj, value.file, out, 1 << 20)
        files.setdefault(name, []).append(str(target))
    return files


async def _read(request: Request, gateway: Gateway, where: Path) -> tuple[JobSpec, dict[str, list[str]]]:
    settings = gateway.settings
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    uploaded: dict[str, list[str]] = {}
    if content_type == "application/json":
        spec = _spec(await request.body())
    elif content_type == "multipart/form-data":
        try:
            form = await request.form(max_files=settings.max_form_parts, max_fields=settings.max_form_parts)
        except Exception as exc:  # python-multipart refused the body (Starlette raises its HTTPException)
            raise MalformedRequest("body", f"broken multipart body: {getattr(exc, 'detail', exc)}") from None
        try:
            raw = form.get("job")
            if raw is not None and not isinstance(raw, str):
                raise InputError("job", "the job's options go in a text field 'job' (JSON), not a file")
            spec = _spec(raw or "{}")
            uploaded = await _save_uploads(form, where / "inputs")
        finally:
            await form.close()
    else:
        raise InputError("content-type", f"application/json (paths) or multipart/form-data (uploads), got "
                                         f"{content_type or 'none'!r}")
    files = dict(uploaded)
    named = {**spec.sensors, **{f"{k}{MASK_SUFFIX}": v for k, v in spec.masks.items()}}
    for key, patterns in named.items():
        if key in uploaded:
            continue  # the uploads stand for the names the spec gave
        field = f"masks.{key[: -len(MASK_SUFFIX)]}" if key.endswith(MASK_SUFFIX) else f"sensors.{key}"
        files[key] = await run_in_threadpool(resolve_paths, field, patterns, settings.job_roots)
    if not files:
        raise InputError("sensors", "no sensor given: upload files (one part per sensor) or name paths in 'sensors'")
    if spec.aoi is not None:  # the area of interest, by path under the roots like the rasters
        aoi = await run_in_threadpool(resolve_paths, "aoi", spec.aoi, settings.job_roots)
        if len(aoi) != 1:
            raise InputError("aoi", f"one vector file, got {len(aoi)} matches for {spec.aoi!r}")
        spec = spec.model_copy(update={"aoi": aoi[0]})
    return spec, files


@router.post("/v1/jobs", status_code=202, summary="Start a scene job",
             responses={202: {"description": "the job, queued; poll its Location"}})
async def create_job(request: Request, gateway: GatewayDep) -> JSONResponse:
    """JSON ``{"sensors": {"l8": ["scene.tif"]}, "dates": ..., "head": ..., "output": ...}`` with paths under the
    job roots, or multipart: a ``job`` field holding that JSON and one file part per sensor (name = sensor)."""
    store = gateway.jobs()
    if len(store.active()) >= gateway.settings.max_jobs_queued:
        raise LimitExceeded("max_jobs_queued", "job", f"{gateway.settings.max_jobs_queued} jobs are queued or "
                            "running; retry later", status=429,
                            headers={"Retry-After": f"{gateway.settings.overload_retry_after_s:g}"})
    job_id = store.new_id()
    where = job_dir(gateway.settings, job_id)
    where.mkdir(parents=True)
    try:
        spec, files = await _read(request, gateway, where)
        try:
            plan = await run_in_threadpool(plan_job, gateway.settings, spec, files, where)
        except SceneError as exc:
            raise _api_error(exc, where) from None
    except BaseException:
        shutil.rmtree(where, ignore_errors=True)
        raise
    record = store.create(job_id, spec.model_dump(mode="json"), str(plan.job.out), plan.grid.n_tiles,
                          extra={"files": files})
    body = record.public()
    body["links"] = {"self": f"/v1/jobs/{job_id}", "result": f"/v1/jobs/{job_id}/result"}
    return JSONResponse(body, status_code=202, headers={"Location": f"/v1/jobs/{job_id}"})


def _record(gateway: Gateway, job_id: str) -> Any:
    record = gateway.jobs().get(job_id) if _ID.match(job_id) else None
    if record is None:
        raise NotFound("job_id", f"no job {job_id!r} (finished jobs are kept {gateway.settings.job_ttl_s:g} s)")
    return record


@router.get("/v1/jobs/{job_id}", summary="A job's state and progress")
async def get_job(job_id: str, gateway: GatewayDep) -> dict[str, Any]:
    record = await run_in_threadpool(_record, gateway, job_id)
    return record.public()


@router.get("/v1/jobs/{job_id}/result", summary="A finished job's output file",
            responses={200: {"description": "Cloud-Optimized GeoTIFF (dense, patch) or GeoParquet (tile)"}})
async def job_result(job_id: str, gateway: GatewayDep) -> FileResponse:
    record = await run_in_threadpool(_record, gateway, job_id)
    if record.state != DONE:
        raise Conflict("job_id", f"job {job_id} is {record.state}, not done"
                       + (f": {record.error['message']}" if record.error else ""))
    out = Path(record.out)
    if not out.is_file():
        raise NotFound("job_id", f"job {job_id}'s output is gone from this gateway's jobs directory")
    output = record.spec.get("output", "dense")
    return FileResponse(out, media_type=MEDIA_TYPE[output], filename=f"{job_id}{out.suffix}")


@router.delete("/v1/jobs/{job_id}", summary="Cancel a job, or delete a finished one",
               responses={202: {"description": "cancelling"}, 204: {"description": "deleted"}})
async def delete_job(job_id: str, gateway: GatewayDep) -> Response:
    record = await run_in_threadpool(_record, gateway, job_id)
    store = gateway.jobs()
    if record.state in ACTIVE:
        await run_in_threadpool(store.request_cancel, job_id)
        now = await run_in_threadpool(store.get, job_id)
        return JSONResponse((now or record).public(), status_code=202)
    await run_in_threadpool(store.delete, job_id)
    shutil.rmtree(job_dir(gateway.settings, job_id), ignore_errors=True)
    return Response(status_code=204)
