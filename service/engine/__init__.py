"""The serving engine: Redis-queued requests, dynamic batching, workers around any model runner.

Nothing here imports the model or the gateway; a model reaches the engine only through a ``Runner``
(``service.engine.batching``), and callers through ``service.engine.producer``.
"""
