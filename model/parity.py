"""Parity against the official implementation's outputs (``shared/fixtures/reference``).

``anysat check-parity --fixtures DIR`` runs every case of ``DIR/manifest.json`` and prints a table
of max errors; the test suite runs the same function.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from safetensors.torch import load_file

from .checkpoint import load_official_state_dict
from .config import model_config
from .encoder import AnySat

TOLERANCES = {"float32": (2e-5, 1e-5), "float64": (1e-9, 1e-9)}  # (atol, rtol), as the fixtures suggest


@dataclass(frozen=True)
class CaseResult:
    case_id: str
    dtype: str
    shape: tuple[int, ...]
    max_abs_err: float
    allowed: float  # max over elements of atol + rtol·|expected|
    passed: bool


def load_manifest(fixtures: Path) -> dict:
    return json.loads((fixtures / "manifest.json").read_text())


@lru_cache(maxsize=4)
def _model(fixtures: Path, weights: str, dtype: str) -> AnySat:
    ckpt = torch.load(fixtures / "anysat_tiny_seed0.pth", map_location="cpu", weights_only=True)
    state = ckpt["state_dict"]
    if "perturb" in weights:
        state.update(load_file(str(fixtures / "anysat_tiny_seed0_perturb_overrides.safetensors")))
    model = AnySat(model_config("tiny"))
    load_official_state_dict(model, state)
    return model.to(getattr(torch, dtype)).eval()


def load_case_inputs(fixtures: Path, manifest: dict, case: dict) -> dict[str, torch.Tensor]:
    raw = load_file(str(fixtures / case["input_file"]))
    # safetensors returns keys sorted; the official order fixes the token order and dense default.
    data = {k: raw[k] for k in manifest["inputs"][case["input"]]["key_order"]}
    if case["compute_dtype"] == "float64":
        data = {k: v.double() if v.is_floating_point() else v for k, v in data.items()}
    return data


def run_case(fixtures: Path, manifest: dict, case: dict) -> CaseResult:
    model = _model(fixtures, case["weights"], case["compute_dtype"])
    data = load_case_inputs(fixtures, manifest, case)
    with torch.no_grad():
        out = model(data, patch_size=case["patch_size"], output=case["output"],
                    output_modality=case["output_modality"], dense_layout="reference")
    expected = torch.load(fixtures / case["output_file"], weights_only=True)[case["output_key"]]
    atol, rtol = TOLERANCES[case["compute_dtype"]]
    if tuple(out.shape) != tuple(expected.shape):
        return CaseResult(case["id"], case["compute_dtype"], tuple(out.shape), float("inf"), 0.0, False)
    err = (out.to(expected.dtype) - expected).abs()
    allowed = atol + rtol * expected.abs()
    return CaseResult(case["id"], case["compute_dtype"], tuple(out.shape), err.max().item(),
                      allowed.max().item(), bool((err <= allowed).all()))


def check_parity(fixtures: Path) -> list[CaseResult]:
    manifest = load_manifest(fixtures)
    return [run_case(fixtures, manifest, case) for case in manifest["cases"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="anysat check-parity", description=__doc__)
    parser.add_argument("--fixtures", type=Path, default=Path("../shared/fixtures/reference"),
                        help="directory holding manifest.json and the official outputs")
    args = parser.parse_args(argv)
    if not (args.fixtures / "manifest.json").is_file():
        print(f"error: {args.fixtures}/manifest.json not found", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, torch.get_num_threads()))
    results = check_parity(args.fixtures)
    width = max(len(r.case_id) for r in results)
    print(f"{'case':<{width}}  {'dtype':<7}  {'shape':<18}  {'max |err|':>10}  {'allowed':>9}  result")
    for r in results:
        print(f"{r.case_id:<{width}}  {r.dtype:<7}  {list(r.shape)!s:<18}  {r.max_abs_err:10.2e}  "
              f"{r.allowed:9.1e}  {'ok' if r.passed else 'FAIL'}")
    failed = [r for r in results if not r.passed]
    print(f"\n{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
