"""The Grafana dashboard as code: the committed JSON is what deploy/grafana/build.py generates, Grafana's own
types (grafana-foundation-sdk) read every field of it, it holds the panels issue 14 asks for, and every metric it
queries is documented. ``prove.py`` is checked against a real, empty Prometheus: it must fail there.

Grafana itself cannot run here (no package); tests/test_dashboard_live.py proves the queries on live data."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from benchmarks.dashboard import binaries, free_port

REPO = Path(__file__).resolve().parents[1]
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "anysat.json"


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _targets(d: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(p["title"], t) for p in d["panels"] for t in p.get("targets", [])]


def test_committed_json_is_what_the_generator_writes() -> None:
    out = subprocess.run([sys.executable, str(GRAFANA / "build.py"), "--check"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr


def test_grafana_types_read_every_field() -> None:
    """Decoded with the SDK's Dashboard model and encoded again, nothing is lost: no field Grafana's schema lacks."""
    from grafana_foundation_sdk.cog import plugins
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import Dashboard

    plugins.register_default_plugins()
    original = _dashboard()
    again = json.loads(JSONEncoder(sort_keys=True).encode(Dashboard.from_json(original)))

    def lost(a: Any, b: Any, path: str = "") -> list[str]:
        if isinstance(a, dict):
            return [f"{path}/{k}" for k in a if not isinstance(b, dict) or k not in b] + [
                x for k in a if isinstance(b, dict) and k in b for x in lost(a[k], b[k], f"{path}/{k}")]
        if isinstance(a, list):
            return [x for i, (u, v) in enumerate(zip(a, b, strict=True)) for x in lost(u, v, f"{path}[{i}]")]
        return [] if a == b else [f"{path}: {a!r} != {b!r}"]

    assert lost(original, again) == []


def test_layout_ids_datasource_and_variables() -> None:
    d = _dashboard()
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
    source = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = source["datasources"][0]["uid"]
    for title, t in _targets(d):
        assert t["datasource"]["uid"] == uid, title
    for p in d["panels"]:
        refs = [t["refId"] for t in p.get("targets", [])]
        assert len(refs) == len(set(refs)), p["title"]
    names = {v["name"] for v in d["templating"]["list"]}
    assert names == {"instance", "worker"}
    used = {m for _, t in _targets(d) for m in re.findall(r"\$(\w+)", t["expr"])} - {"__rate_interval"}
    assert used == names
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "anysat.yml").read_text())
    assert provider["providers"][0]["options"]["path"]


def test_the_panels_the_issue_lists() -> None:
    text = json.dumps(_dashboard())
    for metric in ("anysat_gateway_requests_total", "anysat_gateway_request_seconds_bucket", "histogram_quantile(0.5",
                   "histogram_quantile(0.95", "histogram_quantile(0.99", "anysat_gateway_rejected_total",
                   "anysat_queue_depth", "anysat_gateway_in_flight", "anysat_live_workers", "anysat_batch_size_bucket",
                   "anysat_queue_wait_seconds_bucket", "anysat_inference_seconds_bucket", "anysat_requests_total",
                   "anysat_export_cache_hits_total", "anysat_export_cache_misses_total", "anysat_graphs_loaded",
                   "anysat_reclaimed_total", "anysat_dead_lettered_total", "redis_memory_used_bytes",
                   "process_resident_memory_bytes"):
        assert metric in text, metric


def test_every_queried_metric_is_documented() -> None:
    doc = (REPO / "docs" / "metrics.md").read_text()
    exprs = [t["expr"] for _, t in _targets(_dashboard())]
    rules = (REPO / "deploy" / "prometheus" / "alerts.yml").read_text()
    metrics = set(re.findall(r"\b(anysat_[a-z_]+|process_[a-z_]+|redis_[a-z_]+)", " ".join(exprs) + rules))
    base = {re.sub(r"_(bucket|total)$", "", m) for m in metrics}
    missing = sorted(m for m in base if m not in doc)
    assert missing == []


def test_prove_fails_on_a_prometheus_without_anysat_data(tmp_path: Path) -> None:
    """A real Prometheus scraping only itself: every panel query is empty, so the proof must exit 1."""
    prometheus = binaries()["prometheus"]
    if prometheus is None:
        pytest.skip("prometheus not installed (apt-get install -y --no-install-recommends prometheus)")
    port = free_port()
    (tmp_path / "prometheus.yml").write_text(
        f"global: {{scrape_interval: 1s}}\nscrape_configs:\n"
        f"  - {{job_name: prometheus, static_configs: [{{targets: ['127.0.0.1:{port}']}}]}}\n")
    proc = subprocess.Popen([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "prometheus did not start"
            time.sleep(0.2)
        out = subprocess.run([sys.executable, str(REPO / "deploy" / "prometheus" / "prove.py"), "--url", url],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 1, out.stdout + out.stderr
        assert "FAIL" in out.stdout and "(empty)" in out.stdout
        waited = subprocess.run([sys.executable, str(REPO / "deploy" / "prometheus" / "prove.py"), "--url", url,
                                 "--wait-alert", "AnysatNoLiveWorkers", "--timeout", "1"],
                                capture_output=True, text=True, timeout=60)
        assert waited.returncode != 0 and "no alert rule" in waited.stdout + waited.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=30)
