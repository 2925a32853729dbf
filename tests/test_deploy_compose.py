"""The compose deployment's promises, read from the files themselves (fast; no engine needed). That the stack runs
and keeps these promises under load is `bash deploy/test.sh` (deploy/README.md), which needs a Docker Engine."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
DOCKERFILE = (REPO / "Dockerfile").read_text()


def test_every_published_port_is_on_loopback_only() -> None:
    published = [(name, p) for name, s in SERVICES.items() for p in s.get("ports", [])]
    assert published, "the gateway, Prometheus and Grafana publish ports"
    for name, port in published:
        assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond 127.0.0.1"


@pytest.mark.parametrize("name", ["export", "gateway", "worker", "worker-gpu"])
def test_services_that_open_the_checkpoint_mount_weights_and_the_export_cache(name: str) -> None:
    volumes = SERVICES[name]["volumes"]
    assert "./weights:/weights:ro" in volumes
    assert "exports:/exports" in volumes
    assert SERVICES[name]["environment"]["ANYSAT_EXPORT_DIR"] == "/exports"


def test_start_order_waits_for_redis_health_and_the_prewarm() -> None:
    for name in ("gateway", "worker", "worker-gpu"):
        deps = SERVICES[name]["depends_on"]
        assert deps["redis"] == {"condition": "service_healthy"}
        assert deps["export"] == {"condition": "service_completed_successfully"}
    assert "healthcheck" in SERVICES["redis"]
    assert "/readyz" in " ".join(SERVICES["gateway"]["healthcheck"]["test"])


def test_workers_are_replicated_restarted_and_scraped() -> None:
    worker = SERVICES["worker"]
    assert worker["deploy"]["replicas"] >= 2
    assert worker["restart"] == "unless-stopped"
    assert worker["stop_grace_period"]
    assert worker["command"][-2:] == ["--metrics-port", "9100"]
    assert "ANYSAT_REDIS_URL" in SERVICES["gateway"]["environment"], "else the gateway starts its own Redis"


def test_optional_services_stay_out_of_a_plain_up() -> None:
    assert SERVICES["grafana"]["profiles"] == ["grafana"]
    gpu = SERVICES["worker-gpu"]
    assert gpu["profiles"] == ["gpu"] and gpu["build"]["dockerfile"] == "deploy/gpu.Dockerfile"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_third_party_images_are_overridable() -> None:
    for name, var in (("redis", "REDIS_IMAGE"), ("prometheus", "PROMETHEUS_IMAGE"),
                      ("redis-exporter", "REDIS_EXPORTER_IMAGE"), ("grafana", "GRAFANA_IMAGE")):
        assert re.fullmatch(rf"\$\{{{var}:-[^}}]+\}}", SERVICES[name]["image"]), SERVICES[name]["image"]


def test_the_image_is_non_root_with_a_healthcheck_and_a_base_argument() -> None:
    assert "ARG BASE_IMAGE=python:3.11-slim" in DOCKERFILE
    users = re.findall(r"^USER (\S+)", DOCKERFILE, re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*readyz", DOCKERFILE, re.M | re.S)
    assert "--no-index" in DOCKERFILE, "the wheelhouse path needs no network"


def test_the_prewarm_lists_configurations_the_model_takes() -> None:
    pytest.importorskip("torch")
    from service.runtime.export import check_configuration

    sys.path.insert(0, str(REPO / "deploy"))  # deploy/ is no package: its scripts are found by path
    try:
        from warm import configurations
    finally:
        sys.path.remove(str(REPO / "deploy"))
    configs = configurations(REPO / "deploy" / "warm.json")
    assert len(configs) == len(json.loads((REPO / "deploy" / "warm.json").read_text())["configurations"])
    for config in configs:
        check_configuration(config)  # raises naming what the model cannot take
