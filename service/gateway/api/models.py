"""``GET /v1/models``: the served checkpoint, the sensors its model takes, output kinds, heads and limits."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from model.inputs import OUTPUTS
from model.sensors import SENSORS
from service.gateway.api.deps import GatewayDep
from service.gateway.errors import ApiError
from service.runtime.export import list_exports

router = APIRouter(tags=["models"])


def _sensor(name: str) -> dict[str, Any]:
    s = SENSORS[name]
    return {"name": name, "description": s.description, "bands": list(s.bands), "gsd_m": s.gsd,
            "time_series": s.time_series, "layout": "[T, C, H, W]" if s.time_series else "[C, H, W]",
            "statistics": None if s.stats is None else {"source": s.stats.source, "suspect": s.stats.suspect}}


def served_sensors(checkpoint: dict[str, Any]) -> list[str]:
    """The sensors the served model has projectors for, in the sensor table's order; all of them when the
    checkpoint cannot be read (its error is in ``checkpoint``, and a request says more)."""
    taken = checkpoint.get("modalities")
    return [n for n in SENSORS if taken is None or n in taken]


@router.get("/v1/models", summary="What this gateway serves")
async def models(gateway: GatewayDep) -> dict[str, Any]:
    checkpoint = await run_in_threadpool(gateway.checkpoint)
    heads: list[dict[str, Any]] = []
    for name in gateway.heads.names():
        try:
            c = gateway.heads.config(name)
        except ApiError as exc:
            heads.append({"name": name, "error": str(exc)})
            continue
        heads.append({"name": name, "kind": c.kind, "classes": list(c.class_names), "patch_size": c.patch_size,
                      "modalities": list(c.modalities), "output_modality": c.output_modality})
    return {
        "checkpoint": checkpoint,
        "outputs": list(OUTPUTS),
        "sensors": [_sensor(n) for n in served_sensors(checkpoint)],
        "heads": heads,
        # Exported lazily by the workers (one per batch key) into the shared export cache.
        "exported_configurations": await run_in_threadpool(list_exports, gateway.settings.export_dir),
        "v2_models": [f"{gateway.settings.queue_prefix}-{o}" for o in OUTPUTS],
        "limits": gateway.settings.limits(),
    }
