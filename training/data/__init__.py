"""Data layer of training/: the tile dataset format, readers, writers, adapters, cutter and statistics.

The format itself is specified in ``training.data.format``.
"""

from training.data.collate import collate
from training.data.cutter import cut_tiles
from training.data.dataset import TileDataset
from training.data.format import DatasetIndex, LabelSpec, TileEntry, read_index
from training.data.stats import compute_stats, load_stats
from training.data.tilefile import Georef, TileSensor
from training.data.treesatai import convert_treesatai
from training.data.writer import TileWriter

__all__ = [
    "DatasetIndex",
    "Georef",
    "LabelSpec",
    "TileDataset",
    "TileEntry",
    "TileSensor",
    "TileWriter",
    "collate",
    "compute_stats",
    "convert_treesatai",
    "cut_tiles",
    "load_stats",
    "read_index",
]
