"""The dashboard and the no-live-workers alert proven on live data, without Docker: a real Redis with the Redis
exporter, a gateway, two ``anysat worker --metrics-port`` processes and a real Prometheus on the compose file's
jobs and alerts.yml (benchmarks/dashboard.py). A bounded load of the shipped TreeSatAI tile and Landsat crop runs;
then every panel and variable query must answer non-empty and finite, and stopping the workers must fire
AnysatNoLiveWorkers, starting them again resolve it.

The workers run eager PyTorch here: exporting the Landsat mask configuration to ONNX takes about a minute on
these cores, past this tier's budget. ``python -m benchmarks.dashboard`` runs the same proof with ONNX Runtime
workers (export cache misses, hits and graphs loaded then non-zero) and draws docs/img/dashboard.png."""

from __future__ import annotations

import pytest

from benchmarks.dashboard import Stack, binaries, prove_stack

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(None in binaries().values(), reason="needs prometheus and prometheus-redis-exporter "
                       "(apt-get install -y --no-install-recommends prometheus prometheus-redis-exporter)"),
]


def test_every_panel_query_answers_and_the_no_workers_alert_fires_and_resolves() -> None:
    stack = Stack(runtime="eager")
    try:
        result = prove_stack(stack, n=30)
    finally:
        stack.stop()
    assert result.statuses.get(200, 0) >= 30, result.statuses
    assert result.statuses.get(429, 0) > 0, result.statuses  # the burst past max_in_flight: the refusal panels
    assert result.proof_rc == 0  # prove.py printed the table above; exit 0 = every query non-empty and finite
    assert result.fired_s is not None and result.fired_s < 60  # for: 15s, plus heartbeat expiry and scrapes
    assert result.resolved_s is not None and result.resolved_s < 60
