"""Fixtures for model tests: the official-format reference fixtures in ``shared/`` and real data.

The reference fixtures live beside the repository (``../shared/fixtures/reference``, or
``$ANYSAT_REFERENCE_FIXTURES``); CI has them. A missing directory is an error, not a skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from model import AnySat, create_model
from model.parity import load_case_inputs, load_manifest

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("ANYSAT_REFERENCE_FIXTURES", REPO.parent / "shared" / "fixtures" / "reference"))
OFFICIAL_TINY = REFERENCE / "anysat_tiny_seed0.pth"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not (REFERENCE / "manifest.json").is_file():
        raise FileNotFoundError(f"reference fixtures not found at {REFERENCE}; set ANYSAT_REFERENCE_FIXTURES")
    return REFERENCE


@pytest.fixture(scope="session")
def manifest(reference_dir: Path) -> dict:
    return load_manifest(reference_dir)


@pytest.fixture(scope="session")
def tiny(reference_dir: Path) -> AnySat:
    """The official-format tiny checkpoint (random weights, seed 0), loaded through our loader."""
    return create_model(checkpoint=reference_dir / "anysat_tiny_seed0.pth")


@pytest.fixture(scope="session")
def treesat(reference_dir: Path, manifest: dict) -> dict[str, torch.Tensor]:
    """The real TreeSatAI-TS tile (normalised, 1-based day-of-year dates) in the official key order."""
    case = next(c for c in manifest["cases"] if c["input"] == "treesat")
    return load_case_inputs(reference_dir, manifest, case)
