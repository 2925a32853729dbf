"""Every case of the official fixtures, through the same code path as ``anysat check-parity``."""

from __future__ import annotations

import json

import pytest
from model_fixtures import REFERENCE

from model.parity import main, run_case

CASES = json.loads((REFERENCE / "manifest.json").read_text())["cases"] if REFERENCE.is_dir() else []


def test_manifest_has_all_cases(manifest: dict) -> None:
    assert len(manifest["cases"]) == 64 == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_case_matches_official_output(reference_dir, manifest, case) -> None:
    result = run_case(reference_dir, manifest, case)
    assert result.shape == tuple(case["shape"])
    assert result.passed, f"{case['id']}: max |err| {result.max_abs_err:.3e} > allowed {result.allowed:.1e}"


def test_check_parity_command_prints_table(reference_dir, capsys) -> None:
    assert main(["--fixtures", str(reference_dir)]) == 0
    out = capsys.readouterr().out
    assert "64 passed, 0 failed" in out
    assert "s2_s1_modis__ps30__all" in out


def test_check_parity_command_missing_dir(tmp_path, capsys) -> None:
    assert main(["--fixtures", str(tmp_path)]) == 2
    assert "manifest.json not found" in capsys.readouterr().err
