"""Acquisition dates: parsing them out of product/file names and turning them into day-of-year (one copy, for
the scene tiler and training alike).

The model's ``<m>_dates`` are 1-based day-of-year (1 January = 1), as Python's ``tm_yday`` and every
official dataset class except PASTIS produce them (reference doc §1.11).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable

import numpy as np

# An 8-digit calendar date, optionally followed by a 'T' time, not embedded in a longer digit run:
# S2 "S2A_MSIL2A_20200102T102421_N0213_...", S1 "S1A_IW_GRDH_1SDV_20200103T170841_...",
# Landsat "LC08_224078_20200518_crop512".
_DATE_TOKEN = re.compile(r"(?<!\d)(\d{4})(\d{2})(\d{2})(?:T\d{6})?(?!\d)")


def parse_product_date(name: str | bytes) -> dt.date:
    """The acquisition date carried by a product or file name.

    The first valid ``YYYYMMDD`` token wins: in Sentinel product names the sensing (start) time comes
    before the processing/stop time, so this is the acquisition date, without relying on one fixed
    ``_``-field position (S2 puts it 3rd, S1 5th; older names differ).
    """
    text = name.decode("utf-8", errors="replace") if isinstance(name, bytes) else str(name)
    for match in _DATE_TOKEN.finditer(text):
        year, month, day = (int(g) for g in match.groups())
        try:
            return dt.date(year, month, day)
        except ValueError:
            continue  # e.g. a tile or orbit number that merely looks like a date
    raise ValueError(f"no acquisition date (YYYYMMDD) found in product name {text!r}")


def to_date(value: dt.date | dt.datetime | str | bytes) -> dt.date:
    """A date from a ``date``/``datetime``, an ISO string ``2020-05-18`` or a name holding ``YYYYMMDD``."""
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    text = value.decode() if isinstance(value, bytes) else value
    try:
        return dt.date.fromisoformat(text.strip())
    except ValueError:
        return parse_product_date(text)


def day_of_year(date: dt.date) -> int:
    """1-based day of year (1 January = 1, 31 December = 365 or 366)."""
    return date.timetuple().tm_yday


def days_of_year(dates: Iterable[dt.date]) -> np.ndarray:
    return np.asarray([day_of_year(d) for d in dates], dtype=np.int64)
