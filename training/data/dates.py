"""Acquisition dates for training's readers: the scene core's (``scene.dates``), one set of rules for the tiler
that serves training and inference."""

from scene.dates import day_of_year, days_of_year, parse_product_date, to_date

__all__ = ["day_of_year", "days_of_year", "parse_product_date", "to_date"]
