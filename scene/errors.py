"""Bad scene input, named by the field it came from, raised before any work starts."""

from __future__ import annotations


class SceneError(ValueError):
    """``field``: which input is wrong (``sensor.l8``, ``dates.s2``, ``tile_size``, ``area``); ``str(e)`` is
    ``"<field>: <message>"``. An HTTP layer answers it as 422."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


class SceneLimitError(SceneError):
    """A configured limit (area, tiles) is exceeded; ``limit`` names the setting. An HTTP layer answers 413."""

    def __init__(self, limit: str, field: str, message: str) -> None:
        super().__init__(field, message)
        self.limit = limit
