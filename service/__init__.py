"""anysat-serve's serving stack in three rooms, dependencies pointing one way::

    gateway  ->  runtime  ->  engine
    (HTTP)       (model)      (queue, batching, workers)

``service.client`` is the Python client (numpy + httpx only).
"""
