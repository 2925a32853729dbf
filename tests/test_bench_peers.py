"""benchmarks.peers: the peers get what the worker gets (session options, batch inputs), and the harness runs.

The end-to-end run (slow tier) exports the three configurations and runs ``python -m benchmarks.peers --quick``:
a few requests per system. LitServe and Ray Serve come from the ``[bench]`` extra, which the default setup does not
install: a system whose package is missing is skipped by the harness, with the reason in its output and JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.peers.common import decode_request, encode_request, read_spec, session_options, stack, write_spec
from benchmarks.peers.harness import SYSTEMS, spec_entries
from benchmarks.peers.systems import missing_package
from benchmarks.serving import CONFIGS, make_request
from service.runtime import runner

REPO = Path(__file__).resolve().parents[1]


def test_peers_use_the_workers_session_options() -> None:
    ours, peers = runner.session_options(), session_options()
    assert peers.intra_op_num_threads == ours.intra_op_num_threads
    assert peers.inter_op_num_threads == ours.inter_op_num_threads
    assert peers.enable_mem_pattern == ours.enable_mem_pattern
    assert peers.graph_optimization_level == ours.graph_optimization_level
    assert peers.execution_mode == ours.execution_mode
    key = "session.force_spinning_stop"
    assert peers.get_session_config_entry(key) == ours.get_session_config_entry(key) == "1"


@pytest.mark.parametrize("config", range(len(CONFIGS)))
def test_peer_batches_equal_the_workers(tmp_path: Path, config: int) -> None:
    """Same requests (random date counts) -> the same normalised, padded, masked batch as the worker stacks."""
    rng = np.random.default_rng(config)
    requests = [make_request(CONFIGS[config], rng) for _ in range(3)]
    assert len({len(r[f"{CONFIGS[config].names[-1]}_dates"]) for r in requests}) > 1  # padding is exercised
    write_spec(tmp_path / "spec.json", spec_entries([Path("unused.onnx")] * len(CONFIGS)))
    expected = runner.stack_requests(CONFIGS[config], requests)
    sent = [decode_request(json.loads(json.dumps(encode_request(config, {k: v for k, v in r.items()
                                                                          if not k.endswith("_stats")}))))[1]
            for r in requests]
    got = stack(read_spec(tmp_path / "spec.json")[config], list(expected), sent)
    assert list(got) == list(expected)
    for name, value in expected.items():
        assert got[name].dtype == value.dtype, name
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_a_missing_peer_package_is_named() -> None:
    assert missing_package("anysat-serve") is None
    for name in ("litserve", "ray-serve"):
        why = missing_package(name)
        assert why is None or ("not installed" in why and "[bench]" in why)


@pytest.mark.slow
def test_quick_run_measures_every_installed_system(tmp_path: Path) -> None:
    out = tmp_path / "peers.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.peers", "--quick", "--out", str(out),
                           "--work-dir", str(tmp_path / "work")], cwd=REPO, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    installed = [n for n in SYSTEMS if missing_package(n) is None]
    assert sorted(result["summary"]) == sorted(installed)
    assert sorted(result["skipped"]) == sorted(set(SYSTEMS) - set(installed))
    for name, s in result["summary"].items():
        assert s["throughput"] > 0 and s["mixed_throughput"] > 0, name
        assert 1 <= s["mixed_mean_batch"] <= 8 and s["p50_1"] > 0 and s["rss_mb"] > 0, name
        assert s["max_abs_diff_vs_raw"] < 1e-3, name  # the same graph on the same inputs answers the same
    assert "| throughput at saturation, 32 callers (tiles/s) |" in proc.stdout
    for name in result["skipped"]:
        assert f"{name}: skipped" in proc.stdout
