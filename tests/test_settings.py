"""One settings class per process: its fields are the environment variables, the flags and the documentation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from anysat.settings_doc import render
from service.gateway.settings import GatewaySettings
from service.runtime.settings import ModelWorkerSettings

REPO = Path(__file__).resolve().parents[1]


def test_settings_page_is_generated_from_the_classes() -> None:
    page = (REPO / "docs" / "settings.md").read_text()
    assert page == render(), "docs/settings.md is stale: run `anysat settings > docs/settings.md`"
    for cls in (GatewaySettings, ModelWorkerSettings):
        for name, field in cls.model_fields.items():
            assert field.description, f"{cls.__name__}.{name} has no description"
            assert f"`ANYSAT_{name.upper()}`" in page


def test_gateway_admission_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # The bug this guards: admission limits were read from QueueSettings defaults in the gateway, so
    # ANYSAT_MAX_QUEUE_DEPTH had no effect.
    monkeypatch.setenv("ANYSAT_MAX_QUEUE_DEPTH", "8")
    monkeypatch.setenv("ANYSAT_OVERLOAD_RETRY_AFTER_S", "3")
    monkeypatch.setenv("ANYSAT_QUEUE_PREFIX", "p1")
    queue = GatewaySettings().queue
    assert (queue.max_queue_depth, queue.overload_retry_after_s, queue.prefix) == (8, 3.0, "p1")


def test_worker_settings_come_from_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from service.engine.cli import add_flags, settings_from_args

    monkeypatch.setenv("ANYSAT_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("ANYSAT_MAX_GRAPHS", "2")
    parser = argparse.ArgumentParser()
    add_flags(parser, ModelWorkerSettings)
    s = settings_from_args(ModelWorkerSettings, parser.parse_args(["--queue-prefix", "p2", "--runtime", "eager"]))
    assert (s.max_batch_size, s.max_graphs, s.queue.prefix, s.runtime) == (7, 2, "p2", "eager")


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_help_lists_every_setting(command: str) -> None:
    cls = GatewaySettings if command == "serve" else ModelWorkerSettings
    out = subprocess.run([sys.executable, "-m", "anysat.cli", command, "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    missing = [n for n in cls.model_fields if f"--{n.replace('_', '-')}" not in out]
    assert not missing, missing
