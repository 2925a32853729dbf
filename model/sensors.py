"""The sensor table: every modality AnySat knows, described once, as data.

The encoder, the data loaders and request validation all read this table; nothing else hard-codes
band counts, resolutions or statistics. Values follow the official implementation (see
``shared/reference/anysat-reference.md`` §1.3 and §3.2); where no statistics were ever published
they are ``None`` ("unknown"), never invented.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Tokenizer(str, Enum):
    VHR = "vhr"  # single-date very-high-resolution image: strided conv + MLP
    LTAE = "ltae"  # time series: per-pixel lightweight temporal attention encoder


@dataclass(frozen=True)
class NormStats:
    """Per-band z-score statistics, ``(x - mean) / std``, applied to raw values."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    suspect: bool = False  # published, but inconsistent with the data they were applied to


@dataclass(frozen=True)
class Sensor:
    name: str
    description: str
    bands: tuple[str, ...]
    gsd: float  # metres per input pixel, as the model expects it
    time_series: bool
    tokenizer: Tokenizer
    subpatch: float  # metres; the unit of the spatial encoder's positional grid (``input_res``)
    kernel: int = 1  # VHR conv kernel/stride in pixels (one token = kernel x kernel pixels)
    reduce_scale: int = 1  # time series: pixels per patch side = (patch_size // 10) // reduce_scale
    date_period: int = 367  # L-TAE temporal-encoding period T
    context: bool = False  # MODIS: one token per tile, no position, not a patch modality
    stats: NormStats | None = None

    @property
    def channels(self) -> int:
        return len(self.bands)

    @property
    def ndim(self) -> int:
        """Rank of the input tensor: ``[B, C, H, W]`` or ``[B, T, C, H, W]``."""
        return 5 if self.time_series else 4

    @property
    def cells_per_10m(self) -> int:
        """VHR: conv cells per 10 m block (5 for 0.2 m aerial with a 10 px kernel, else 1)."""
        return max(1, round(10 / self.gsd) // self.kernel) if self.tokenizer is Tokenizer.VHR else 1


_DEMO = "AnySat demo.ipynb (TreeSatAI statistics), reference doc §3.2"

_AERIAL_STATS = NormStats(
    mean=(150.89349365234375, 92.7138900756836, 84.85437774658203, 80.70423889160156),
    std=(36.764923095703125, 27.62498664855957, 22.479450225830078, 26.733688354492188),
    source=_DEMO,
)
_S2_STATS = NormStats(
    mean=(4304.32958984375, 4159.2666015625, 4057.776611328125, 4328.951171875, 4571.22119140625,
          4644.87109375, 4837.2470703125, 4700.2578125, 2823.264404296875, 2319.97021484375),
    std=(3537.99755859375, 3324.23486328125, 3270.070068359375, 3250.530029296875, 2897.391357421875,
         2754.4970703125, 2821.521484375, 2625.952392578125, 1731.56298828125, 1549.3028564453125),
    source=_DEMO,
)
# The demo applies these to linear backscatter although they do not look like its statistics
# (VV ~ 0.11 there); kept because the official TreeSatAI example and our parity fixtures use them.
_S1_MEAN = (3.2893013954162598, -3.682938814163208, 0.6116273403167725)
_S1_STD = (40.11152267456055, 40.535335540771484, 1.0343183279037476)
_S1_STATS = NormStats(_S1_MEAN, _S1_STD, source=_DEMO, suspect=True)
_S1_ASC_STATS = NormStats(_S1_MEAN[:2], _S1_STD[:2], source=_DEMO + " (VV, VH of s1)", suspect=True)

_S2_BANDS = ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12")

SENSORS: dict[str, Sensor] = {
    s.name: s
    for s in (
        Sensor("aerial", "Aerial orthophoto (TreeSatAI), 0.2 m", ("B1", "B2", "B3", "B4"), 0.2, False,
               Tokenizer.VHR, subpatch=2.0, kernel=10, stats=_AERIAL_STATS),
        Sensor("aerial-flair", "Aerial orthophoto + elevation (FLAIR), 0.2 m",
               ("R", "G", "B", "NIR", "elevation"), 0.2, False, Tokenizer.VHR, subpatch=2.0, kernel=10),
        Sensor("spot", "SPOT 6-7, 1 m", ("R", "G", "B"), 1.0, False, Tokenizer.VHR, subpatch=10.0,
               kernel=10),
        Sensor("naip", "NAIP, 1.25 m", ("R", "G", "B", "NIR"), 1.25, False, Tokenizer.VHR,
               subpatch=10.0, kernel=8),
        Sensor("s2", "Sentinel-2 L2A time series, 10 m", _S2_BANDS, 10.0, True, Tokenizer.LTAE,
               subpatch=10.0, stats=_S2_STATS),
        Sensor("s1-asc", "Sentinel-1 ascending time series (linear), 10 m", ("VV", "VH"), 10.0, True,
               Tokenizer.LTAE, subpatch=10.0, stats=_S1_ASC_STATS),
        Sensor("s1", "Sentinel-1 time series, 10 m", ("VV", "VH", "VV/VH"), 10.0, True, Tokenizer.LTAE,
               subpatch=10.0, stats=_S1_STATS),
        Sensor("alos", "ALOS-2 PALSAR-2 time series, 30 m", ("HH", "HV", "HH/HV"), 30.0, True,
               Tokenizer.LTAE, subpatch=30.0, reduce_scale=3),
        Sensor("l7", "Landsat 7 time series, 30 m", ("B1", "B2", "B3", "B4", "B5", "B7"), 30.0, True,
               Tokenizer.LTAE, subpatch=30.0, reduce_scale=3),
        # As in S2NAIP, the model sees Landsat 8 resampled to 10 m (B8 from the 15 m product).
        Sensor("l8", "Landsat 8 time series, resampled to 10 m",
               ("B8", "B1", "B2", "B3", "B4", "B5", "B6", "B7", "B9", "B10", "B11"), 10.0, True,
               Tokenizer.LTAE, subpatch=10.0, date_period=366),
        Sensor("modis", "MODIS time series, one 250 m pixel per tile (context token)",
               ("B1", "B2", "B3", "B4", "B5", "B6", "B7"), 250.0, True, Tokenizer.LTAE,
               subpatch=250.0, reduce_scale=12, context=True),
    )
}

# The official checkpoint registers projectors in sorted-name order; so do we.
MODALITIES: tuple[str, ...] = tuple(sorted(SENSORS))


def get_sensor(name: str) -> Sensor:
    try:
        return SENSORS[name]
    except KeyError:
        raise ValueError(f"unknown modality {name!r}; expected one of {', '.join(MODALITIES)}") from None
