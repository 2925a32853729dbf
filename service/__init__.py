"""Serving engine: Redis-queued, dynamically batched workers around any model runner.

Nothing here imports the model; the model reaches the engine only through a ``Runner``
(see ``service.batching``).
"""
