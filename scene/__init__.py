"""Scenes and regions: the geospatial core shared by training's tile cutter and ``anysat predict``.

A ground-unit grid in one output CRS (``grid``), every sensor read at its own GSD through WarpedVRT windows
(``layers``), smooth blending of overlapping tiles written strip by strip (``blend``), and the writers: Cloud-
Optimized GeoTIFF (``cog``) and GeoParquet (``geoparquet``). It knows the sensor table (``model.sensors``) and
nothing of serving or training; ``service.gateway.scenes`` turns its tiles into model requests.
"""

from scene.errors import SceneError, SceneLimitError
from scene.grid import Tile, TileGrid, common_area
from scene.layers import SceneReader, SensorRead
from scene.sources import DatedFile, SensorSource, parse_sources

__all__ = ["DatedFile", "SceneError", "SceneLimitError", "SceneReader", "SensorRead", "SensorSource", "Tile",
           "TileGrid", "common_area", "parse_sources"]
