"""The alert rules and the Prometheus config under deploy/prometheus/, checked by the real promtool.

promtool comes with Debian's ``prometheus`` package (``apt-get install -y --no-install-recommends prometheus``);
without it these tests are skipped, saying so."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

DIR = Path(__file__).resolve().parents[1] / "deploy" / "prometheus"
ALERTS = {"AnysatNoLiveWorkers", "AnysatQueueBacklogGrowing", "AnysatErrorRatioHigh", "AnysatLatencyP95High",
          "AnysatDeadLetters", "AnysatRedisDown", "AnysatTargetDown"}
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install -y "
                                    "--no-install-recommends prometheus)")


def _rules() -> list[dict]:
    return [r for g in yaml.safe_load((DIR / "alerts.yml").read_text())["groups"] for r in g["rules"]]


def test_the_alerts_are_the_ones_documented() -> None:
    names = [r["alert"] for r in _rules()]
    assert sorted(names) == sorted(ALERTS)
    # The e2e test waits about a minute for this one to fire after the workers stop.
    no_workers = next(r for r in _rules() if r["alert"] == "AnysatNoLiveWorkers")
    assert int(no_workers["for"].removesuffix("s")) <= 30
    doc = (DIR.parents[1] / "docs" / "metrics.md").read_text()
    assert all(name in doc for name in ALERTS)


def test_every_alert_has_a_unit_test_that_sees_it_fire_and_one_that_sees_it_quiet() -> None:
    tests = yaml.safe_load((DIR / "alerts_test.yml").read_text())["tests"]
    cases = [c for t in tests for c in t["alert_rule_test"]]
    fired = {c["alertname"] for c in cases if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    assert fired == ALERTS and quiet == ALERTS


@needs_promtool
def test_promtool_passes_the_rule_unit_tests() -> None:
    out = subprocess.run([PROMTOOL, "test", "rules", "alerts_test.yml"], cwd=DIR, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


@needs_promtool
def test_promtool_accepts_the_config_and_its_rule_file() -> None:
    out = subprocess.run([PROMTOOL, "check", "config", "prometheus.yml"], cwd=DIR, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "7 rules found" in out.stdout + out.stderr
    config = yaml.safe_load((DIR / "prometheus.yml").read_text())
    assert config["global"]["scrape_interval"] == config["global"]["evaluation_interval"] == "5s"
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    discovered = {name: (j["dns_sd_configs"][0]["names"], j["dns_sd_configs"][0]["port"])
                  for name, j in jobs.items() if "dns_sd_configs" in j}
    assert discovered == {"anysat-gateway": (["gateway"], 8000), "anysat-worker": (["worker"], 9100),
                          "redis": (["redis-exporter"], 9121)}
    assert "prometheus" in jobs


@needs_promtool
def test_promtool_would_catch_a_broken_rule(tmp_path: Path) -> None:
    """The unit tests can fail: with the no-live-workers threshold inverted they do."""
    broken = (DIR / "alerts.yml").read_text().replace('{state="running"}) < 1', '{state="running"}) > 1')
    assert broken != (DIR / "alerts.yml").read_text()
    (tmp_path / "alerts.yml").write_text(broken)
    shutil.copy(DIR / "alerts_test.yml", tmp_path)
    out = subprocess.run([PROMTOOL, "test", "rules", "alerts_test.yml"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode != 0 and "AnysatNoLiveWorkers" in out.stdout + out.stderr
