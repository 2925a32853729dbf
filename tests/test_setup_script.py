"""scripts/setup.sh installs only when needed: a matching stamp and an importable project skip the install; a
changed pyproject.toml, a broken environment, a missing stamp or ANYSAT_SETUP_FORCE=1 reinstall. Run on a copy of
the scripts with a stand-in .venv whose python records what it is asked to do (no real install happens)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from gateway_fixtures import REPO

FAKE_PYTHON = """#!/usr/bin/env bash
# stands in for .venv/bin/python: `-c <import check>` answers $IMPORT_RC; anything else is logged
if [ "$1" = "-c" ]; then exit "${IMPORT_RC:-0}"; fi
echo "$*" >> "$(dirname "$0")/../calls.log"
"""


@pytest.fixture()
def checkout(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text(FAKE_PYTHON)
    (bin_dir / "python").chmod(0o755)
    (bin_dir / "activate").write_text(f'export PATH="{bin_dir}:$PATH"\n')
    return tmp_path


def setup(checkout: Path, **env: str) -> list[str]:
    log = checkout / ".venv" / "calls.log"
    log.unlink(missing_ok=True)
    r = subprocess.run(["bash", str(checkout / "scripts" / "setup.sh")], env={**os.environ, **env},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return log.read_text().splitlines() if log.exists() else []


def test_installs_once_then_skips(checkout: Path) -> None:
    first = setup(checkout)
    assert first[-1] == '-m pip install -q -e .[serve,train,dev,cpu]' and len(first) == 3
    assert (checkout / ".venv" / ".anysat-setup").is_file()
    assert setup(checkout) == []  # stamp matches, project imports: nothing installed


def test_reinstalls_when_needed(checkout: Path) -> None:
    setup(checkout)
    assert setup(checkout, IMPORT_RC="1") != []  # the environment no longer imports the project
    assert setup(checkout) == []
    with (checkout / "pyproject.toml").open("a") as f:
        f.write("\n# a dependency changed\n")
    assert setup(checkout) != []
    assert setup(checkout) == []
    assert setup(checkout, ANYSAT_SETUP_FORCE="1") != []
    (checkout / ".venv" / ".anysat-setup").unlink()
    assert setup(checkout) != []


def test_run_script_sets_up_through_setup_sh() -> None:
    text = (REPO / "scripts" / "run.sh").read_text()
    assert "bash scripts/setup.sh" in text and "pip install" not in text
