"""Every setting of the REST gateway, in one pydantic-settings class (env vars ``ANYSAT_*``).

Limits are explicit and documented here; the README's table is generated from these descriptions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.engine.settings import QueueSettings
from service.runtime.settings import default_export_dir

REPO = Path(__file__).resolve().parents[2]
# What `anysat serve` serves when ANYSAT_CHECKPOINT is unset: the demo encoder training writes.
DEMO_CHECKPOINT = REPO / "artifacts" / "demo" / "encoder.safetensors"
DEMO_HEADS = REPO / "artifacts" / "demo" / "heads"  # served with the demo encoder: the land-cover head


class GatewaySettings(BaseSettings):
    """The gateway process. Each field is read from ``ANYSAT_<FIELD>`` (e.g. ``ANYSAT_MAX_BODY_BYTES``)."""

    model_config = SettingsConfigDict(env_prefix="ANYSAT_", extra="ignore", frozen=True)

    # --- where things are
    redis_url: str | None = Field(
        None, description="Redis of the queue; unset: `anysat serve` starts a private one (embedded)")
    queue_prefix: str = Field(
        "anysat", min_length=1, description="key namespace (and v2 model-name prefix); must equal the workers'")
    checkpoint: Path | None = Field(
        None, description=f"encoder checkpoint served (official .pth or ours); unset: {DEMO_CHECKPOINT.name} demo")
    heads_dir: Path | None = Field(None, description="directory of <name>.safetensors heads (for /v1/masks); unset "
                                   "with the demo encoder: artifacts/demo/heads")
    worker_metrics_dir: Path | None = Field(
        None, description="PROMETHEUS_MULTIPROC_DIR of local workers, summed into /metrics")
    export_dir: Path = Field(default_factory=default_export_dir,
                             description="the workers' export cache, listed by /v1/models (~/.cache/anysat/exports)")

    # --- limits (exceeding one: 413 or 422 naming it)
    max_body_bytes: int = Field(64 * 2**20, gt=0, description="request body size in bytes (413)")
    max_pixels_per_sensor: int = Field(
        2048 * 2048, gt=0, description="H x W of one sensor image, checked in the TIFF header before decoding (413)")
    max_dates_per_series: int = Field(512, gt=0, description="dates T of one time series (413)")
    max_tiles_per_request: int = Field(64, gt=0, description="tiles in one request (413)")
    max_patches_per_tile: int = Field(4096, gt=0, description="patches per tile, (side / patch_size)^2 (422)")
    max_form_parts: int = Field(256, gt=0, description="files + fields in one multipart request (413)")
    # What a body decodes to, which max_body_bytes does not bound (a 1.5 KB sparse GeoTIFF can claim 1.6 GB).
    # 128 MiB holds a 2048 x 2048 x 4-band float32 (64 MiB) or float64 aerial tile, or an 11-band 512 x 512
    # float32 series of 11 dates; 256 MiB per request keeps one payload well under Redis's 512 MB bulk-string cap.
    max_decoded_bytes_per_sensor: int = Field(
        128 * 2**20, gt=0, description="bytes one sensor of a tile decodes to (all files of a series together), "
                                       "checked from headers before decoding, every encoding (413)")
    max_decoded_bytes_per_request: int = Field(
        256 * 2**20, gt=0, description="bytes all arrays of one request decode to, and what its JSON may parse "
                                       "to (about 96 bytes per number), checked before decoding (413)")

    # --- admission (exceeding one: 429 with Retry-After)
    max_queue_depth: int = Field(10_000, gt=0, description="requests queued or running, all gateways together (429)")
    max_in_flight: int = Field(
        32, gt=0, description="requests this gateway process works on at once (decoding, queued, waiting); "
                              "beyond it: 429 at once (bounds gateway memory under overload)")
    overload_retry_after_s: float = Field(1.0, gt=0, description="Retry-After sent with a 429, in seconds")
    payload_ttl_margin_s: float = Field(60.0, ge=0, description="a request's tensors outlive its deadline by this")

    # --- time
    request_deadline_s: float = Field(60.0, gt=0, description="queue deadline of a request; past it: 504")
    redis_timeout_s: float = Field(
        1.0, gt=0, description="Redis connect timeout; an unreachable Redis answers 503 within about this")

    # --- security
    api_keys: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="comma-separated keys; if set, inference endpoints need header X-API-Key")

    # --- scene jobs (/v1/jobs; docs/scenes.md)
    jobs_dir: Path = Field(default_factory=lambda: default_export_dir().parent / "jobs",
                           description="where jobs keep uploads, journals and results; shared by all gateways "
                                       "(~/.cache/anysat/jobs)")
    job_roots: Annotated[tuple[Path, ...], NoDecode] = Field(
        (), description="comma-separated directories whose files jobs may name by path; unset: uploads only")
    max_jobs_queued: int = Field(100, gt=0, description="jobs queued or running, all gateways together (429)")
    max_jobs_running: int = Field(1, ge=0, description="jobs this gateway process runs at once (0: none here)")
    max_job_upload_bytes: int = Field(2 * 2**30, gt=0, description="body of one POST /v1/jobs with uploads (413)")
    max_job_area_km2: float = Field(50_000.0, gt=0, description="area one job may cover (413)")
    max_job_tiles: int = Field(200_000, gt=0, description="tiles one job may cut (413)")
    max_job_in_flight_tiles: int = Field(64, ge=2, description="tiles of a job read and prepared ahead (memory)")
    job_batch_size: int = Field(16, gt=0, description="tiles a job puts on the queue at once (spread over workers)")
    job_tile_deadline_s: float = Field(120.0, gt=0, description="queue deadline of one tile of a job")
    job_tile_attempts: int = Field(3, gt=0, description="times a lost tile (timed out, dead-lettered) is queued")
    job_lease_s: float = Field(30.0, gt=0, description="a running job's lease; a dead gateway's jobs resume after it")
    job_poll_s: float = Field(0.5, gt=0, description="how often a gateway looks for jobs to run")
    job_ttl_s: float = Field(7 * 86400.0, gt=0, description="how long a finished job's record is kept")

    # --- serving (used by `anysat serve`)
    host: str = Field("127.0.0.1", description="interface `anysat serve` binds")
    port: int = Field(8000, ge=0, le=65535, description="port `anysat serve` binds")
    workers: int = Field(1, ge=0, description="worker processes `anysat serve` starts with the embedded Redis")

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(k.strip() for k in value.split(",") if k.strip())
        return value

    @field_validator("job_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(Path(k.strip()) for k in value.split(",") if k.strip())
        return value

    def resolved_checkpoint(self) -> Path:
        return self.checkpoint if self.checkpoint is not None else DEMO_CHECKPOINT

    def resolved_heads_dir(self) -> Path | None:
        """The configured heads; with the demo encoder (no checkpoint set), the demo heads."""
        if self.heads_dir is not None or self.checkpoint is not None:
            return self.heads_dir
        return DEMO_HEADS if DEMO_HEADS.is_dir() else None

    @property
    def queue(self) -> QueueSettings:
        """The queue as this gateway uses it: admission happens here, in ``enqueue``."""
        return QueueSettings(prefix=self.queue_prefix, max_queue_depth=self.max_queue_depth,
                             overload_retry_after_s=self.overload_retry_after_s,
                             payload_ttl_margin_s=self.payload_ttl_margin_s)

    def limits(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in type(self).model_fields if name.startswith("max_")}
