"""The recipes a newcomer runs (docs/recipes.sh, shown in the README), run as written — the same curl and python
lines, in bash — against a live `anysat serve` on its defaults (the demo encoder and land-cover head; eager
workers here, ONNX Runtime ones in the slow tier): the shipped TreeSatAI tile gives the model's embeddings, the
shipped Landsat crop a mask GeoTIFF with the head's classes on the input's grid. Only the address differs (the
test server's port)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from gateway_fixtures import LANDSAT, REPO, TREESAT
from test_gateway_serve import serving

from model import create_model
from model.heads import load_head
from model.normalize import normalize
from model.sensors import NormStats
from service.gateway.settings import DEMO_CHECKPOINT, DEMO_HEADS
from training.data.treesatai import read_treesatai_tile

RECIPES = REPO / "docs" / "recipes.sh"
README_URL = "http://127.0.0.1:8000"
_SECTION = re.compile(r"^# --- ([a-z0-9-]+):", re.MULTILINE)

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="the recipes use curl")


def recipes() -> dict[str, str]:
    """``# --- <name>: ...`` starts a recipe; its lines run until the next one."""
    text = RECIPES.read_text()
    marks = list(_SECTION.finditer(text))
    return {m[1]: text[m.start():(marks[i + 1].start() if i + 1 < len(marks) else len(text))]
            for i, m in enumerate(marks)}


# The default runtime (onnx) exports both configurations on their first request: 45 s more on 2 cores, so it
# runs in the slow tier; eager runs the same commands through the same gateway in the default one.
@pytest.fixture(scope="module", params=["eager", pytest.param("onnx", marks=pytest.mark.slow)])
def live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[tuple[str, Path, dict[str, str]]]:
    """A running `anysat serve` with no settings but the runtime and a private export cache, and a working
    directory that looks like the repository root to the recipes (examples/ in it), the environment's python
    first on PATH."""
    tmp = tmp_path_factory.mktemp("recipes")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANYSAT_")}
    env["ANYSAT_EXPORT_DIR"] = str(tmp / "exports")
    env["ANYSAT_RUNTIME"] = request.param
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    root = tmp / "root"
    root.mkdir()
    (root / "examples").symlink_to(REPO / "examples")
    with serving(env) as url:
        yield url, root, env


def run(recipe: str, live: tuple[str, Path, dict[str, str]]) -> str:
    url, root, env = live
    script = recipes()[recipe]
    assert README_URL in script
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", script.replace(README_URL, url)], cwd=root, env=env,
                       capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, f"{recipe} failed (rc {r.returncode}):\n{r.stdout}\n{r.stderr}"
    return r.stdout


def test_recipes_file_holds_the_readme_recipes() -> None:
    assert set(recipes()) == {"embed-treesatai", "mask-landsat"}


def test_embed_the_shipped_treesatai_tile(live: tuple[str, Path, dict[str, str]]) -> None:
    out = run("embed-treesatai", live)
    assert out.strip().splitlines()[-1] == "(1, 3, 3, 64)"
    served = np.load(live[1] / "build" / "treesatai" / "embedding.npy")[0]
    # The model on the same tile: the official demo's 300 px aerial crop, the series, the sensor table's
    # statistics (which the demo checkpoint recorded for these sensors).
    tile = read_treesatai_tile(TREESAT.with_suffix(".tif"), TREESAT.with_suffix(".h5"), ("aerial", "s2", "s1-asc"))
    data: dict[str, torch.Tensor] = {}
    for name, item in tile.items():
        data[name] = torch.from_numpy(normalize(name, item.data))[None]
        if item.dates is not None:
            data[f"{name}_dates"] = torch.from_numpy(item.dates)[None]
    with torch.no_grad():
        want = create_model(checkpoint=DEMO_CHECKPOINT)(data, patch_size=20, output="patch")[0].numpy()
    assert np.abs(served - want).max() < 1e-4


def test_mask_the_shipped_landsat_crop(live: tuple[str, Path, dict[str, str]]) -> None:
    out = run("mask-landsat", live)
    assert out.strip().splitlines()[-1].startswith("(120, 120) EPSG:32621 water,crop,tree,developed")
    root = live[1]
    with rasterio.open(root / "build" / "mask.tif") as mask, rasterio.open(root / "build" / "l8.tif") as l8, \
            rasterio.open(LANDSAT) as scene:
        assert mask.crs == scene.crs and mask.transform.almost_equals(l8.transform)
        assert mask.dtypes[0] == "uint8" and mask.nodata == 255
        classes = mask.read(1)
        bands = l8.read()
    # The head on the model's dense features of the same input, normalised with the head's recorded statistics.
    head = load_head(DEMO_HEADS / "landcover.safetensors")
    recorded = head.config.metadata["normalization"]["l8"]
    x = normalize("l8", bands.astype(np.float32), NormStats(tuple(recorded["mean"]), tuple(recorded["std"]), "head"))
    data = {"l8": torch.from_numpy(x)[None, None], "l8_dates": torch.tensor([[139]])}
    with torch.no_grad():
        logits = head(create_model(checkpoint=DEMO_CHECKPOINT)(data, patch_size=20, output="dense",
                                                              output_modality="l8"))[0]
    assert (classes == logits.argmax(0).numpy()).mean() > 0.99  # argmax ties at float noise aside
    assert len(np.unique(classes)) >= 2  # the window holds more than one land cover


def test_the_readme_shows_the_recipes_as_they_are_run() -> None:
    readme = (REPO / "README.md").read_text()
    for name, text in recipes().items():
        commands = "\n".join(line for line in text.strip().splitlines() if not line.startswith("#"))
        assert commands and commands in readme, f"README's recipe {name!r} differs from docs/recipes.sh"
