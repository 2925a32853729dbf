"""Write the Sentinel series of the shipped TreeSatAI-TS tile as files ``curl`` can post to the service.

    python examples/treesatai_series.py build/treesatai

TreeSatAI-TS keeps a tile's series in one HDF5 file (``sen-2-data`` [T, 10, 6, 6], ``sen-1-asc-data``
[T, 2, 6, 6], with product names that carry the dates). This writes, into the given directory,
``s2.npy`` and ``s1-asc.npy`` (raw values, [T, C, 6, 6], sorted by date) and ``s2_dates.txt`` /
``s1-asc_dates.txt`` (their acquisition dates, comma-separated ISO dates), read with the same code
training reads them with. The aerial GeoTIFF is posted as it is (see docs/recipes.sh).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from training.data.treesatai import read_treesatai_tile

TILE = Path(__file__).parent / "data" / "treesatai-ts" / "Abies_alba_1_1005_WEFL_NLF"


def write_series(out: Path, stem: Path = TILE) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, item in read_treesatai_tile(stem.with_suffix(".tif"), stem.with_suffix(".h5"), ("s2", "s1-asc")).items():
        np.save(out / f"{name}.npy", item.data)
        (out / f"{name}_dates.txt").write_text(",".join(item.acquired))
        written[name] = out / f"{name}.npy"
        print(f"{out / f'{name}.npy'}: {list(item.data.shape)} ({len(item.acquired)} dates, "
              f"{item.acquired[0]} .. {item.acquired[-1]})")
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="directory to write into")
    parser.add_argument("--tile", type=Path, default=TILE, help="tile path without suffix (<name>.tif + <name>.h5)")
    args = parser.parse_args()
    write_series(args.out, args.tile)


if __name__ == "__main__":
    main()
