"""Scene and region inference: ``scene`` tiles -> the gateway's prepared requests -> an ``Executor`` -> blended
outputs (COG, GeoParquet). ``anysat predict`` runs it in-process (``InProcessExecutor``); the jobs API runs the
same pipeline with tiles as ordinary queued requests."""

from service.gateway.scenes.executor import Executor, InProcessExecutor, TileRequest
from service.gateway.scenes.job import SceneJob, SceneLimits
from service.gateway.scenes.pipeline import SceneResult, run_scene
from service.gateway.scenes.plan import ScenePlan, plan_scene

__all__ = ["Executor", "InProcessExecutor", "SceneJob", "SceneLimits", "ScenePlan", "SceneResult", "TileRequest",
           "plan_scene", "run_scene"]
