"""Dates of a time series: day-of-year integers (1 January = 1) or ISO dates, as the model wants them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import numpy as np

from service.gateway.errors import InputError, LimitExceeded


def day_of_year(value: int | str, field: str) -> int:
    if isinstance(value, bool):
        raise InputError(field, f"expected a day of year (1-366) or an ISO date, got {value!r}")
    if isinstance(value, int):
        doy = value
    else:
        text = str(value).strip()
        digits = text.removeprefix("-")
        if digits.isascii() and digits.isdigit():
            # int() of a 5,000-digit string raises (Python caps str -> int at 4,300 digits): no day has 4 digits
            doy = int(text) if len(digits) <= 4 else (-1 if text.startswith("-") else 10**4)
        else:
            try:
                doy = dt.date.fromisoformat(text).timetuple().tm_yday
            except ValueError:
                raise InputError(field, f"expected a day of year (1-366) or an ISO date YYYY-MM-DD, "
                                        f"got {text[:40]!r}") from None
    if not 1 <= doy <= 366:
        shown = str(doy) if -10**6 < doy < 10**6 else f"a number of about {int(doy.bit_length() * 0.30103) + 1} digits"
        raise InputError(field, f"day of year must be in 1..366 (1 January = 1), got {shown}")
    return doy


def parse_dates(values: Sequence[int | str] | str, field: str, max_dates: int) -> np.ndarray:
    """``"2020-05-18,2020-06-02"``, ``"139,154"`` or a list of either -> int64 ``[T]``."""
    items: Sequence[int | str] = [v for v in values.split(",") if v.strip()] if isinstance(values, str) else values
    if len(items) == 0:
        raise InputError(field, "no dates given; a time series needs one date per acquisition")
    if len(items) > max_dates:
        raise LimitExceeded("max_dates_per_series", field, f"{len(items)} dates, at most {max_dates} allowed")
    return np.asarray([day_of_year(v, field) for v in items], dtype=np.int64)
