"""Embed the real TreeSatAI-TS tile shipped in ``examples/data/treesatai-ts``.

    python examples/treesatai_embeddings.py --checkpoint AnySat.pth          # official base weights
    python examples/treesatai_embeddings.py --checkpoint ../shared/fixtures/reference/anysat_tiny_seed0.pth

Reads the 0.2 m aerial GeoTIFF and the Sentinel-1/2 series from the HDF5 file, normalises them
with the sensor table's statistics, and prints the shape and a summary of each output kind.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from model import create_model
from model.normalize import normalize
from training.data.treesatai import read_treesatai_tile

TILE = Path(__file__).parent / "data" / "treesatai-ts" / "Abies_alba_1_1005_WEFL_NLF"


def load_tile(stem: Path = TILE) -> dict[str, torch.Tensor]:
    """The tile in the model's input convention: a batch of one, dates as 1-based day of year."""
    tile = read_treesatai_tile(stem.with_suffix(".tif"), stem.with_suffix(".h5"), ("aerial", "s2", "s1-asc"))
    data: dict[str, torch.Tensor] = {}
    for name, item in tile.items():
        data[name] = torch.from_numpy(normalize(name, item.data))[None]
        if item.dates is not None:
            data[f"{name}_dates"] = torch.from_numpy(item.dates)[None]
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="official AnySat .pth or our .safetensors")
    parser.add_argument("--patch-size", type=int, default=20)
    args = parser.parse_args()
    model = create_model(checkpoint=args.checkpoint)
    data = load_tile()
    for key, value in data.items():
        print(f"input  {key:14s} {list(value.shape)}")
    with torch.no_grad():
        for output, modality in (("tile", None), ("patch", None), ("dense", "aerial"), ("dense", "s2")):
            y = model(data, patch_size=args.patch_size, output=output, output_modality=modality)
            label = output + (f"[{modality}]" if modality else "")
            print(f"output {label:14s} {list(y.shape)}  mean {y.mean():+.4f}  std {y.std():.4f}")


if __name__ == "__main__":
    main()
