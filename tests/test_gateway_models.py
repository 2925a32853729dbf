"""``/v1/models`` lists the sensors the served model takes: the checkpoint's projectors, not the whole table."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest
import torch
from gateway_fixtures import serving

from model.sensors import SENSORS
from service.gateway.app import create_app
from service.gateway.settings import DEMO_CHECKPOINT, GatewaySettings
from service.runtime.model_info import describe_checkpoint

DEMO_SENSORS = ["aerial", "s2", "s1-asc", "l8"]  # what the demo encoder was trained on (SENSORS order)


@pytest.fixture(scope="module")
def official_subset(reference_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The official-format tiny checkpoint keeping the projectors of three sensors only (as a model trained on
    fewer sensors would be saved by the official code)."""
    state = torch.load(reference_dir / "anysat_tiny_seed0.pth", map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    keep = ("projector_s2.", "projector_l8.", "projector_modis.")
    subset = {k: v for k, v in state.items() if not k.startswith("projector_") or k.startswith(keep)}
    path = tmp_path_factory.mktemp("ckpt") / "subset.pth"
    torch.save({"state_dict": subset}, path)
    return path


def listed(redis_url: str, checkpoint: Path) -> list[str]:
    settings = GatewaySettings(redis_url=redis_url, queue_prefix=f"m{uuid.uuid4().hex[:8]}", checkpoint=checkpoint,
                               _env_file=None)  # type: ignore[call-arg]
    with serving(create_app(settings)) as url:
        models = httpx.get(f"{url}/v1/models", timeout=30).json()
    assert models["checkpoint"]["modalities"] == sorted(s["name"] for s in models["sensors"])
    return [s["name"] for s in models["sensors"]]


def test_checkpoint_modalities(reference_dir: Path, official_subset: Path) -> None:
    assert describe_checkpoint(DEMO_CHECKPOINT)["modalities"] == sorted(DEMO_SENSORS)
    assert describe_checkpoint(reference_dir / "anysat_tiny_seed0.pth")["modalities"] == sorted(SENSORS)
    info = describe_checkpoint(official_subset)
    assert info["modalities"] == ["l8", "modis", "s2"] and info["embed_dim"] == 256 and info["format"] == "official"


@pytest.mark.skipif(not DEMO_CHECKPOINT.is_file(), reason="the demo encoder is written by training")
def test_models_lists_the_demo_encoders_four_sensors(redis_url: str) -> None:
    assert listed(redis_url, DEMO_CHECKPOINT) == DEMO_SENSORS


def test_models_lists_an_official_checkpoints_projectors(redis_url: str, reference_dir: Path,
                                                         official_subset: Path) -> None:
    assert listed(redis_url, reference_dir / "anysat_tiny_seed0.pth") == list(SENSORS)
    assert listed(redis_url, official_subset) == ["s2", "l8", "modis"]
