"""Scene jobs of the gateway (``/v1/jobs``): the spec, the Redis record and lease, the queue executor that puts
a job's tiles on the worker fleet, and the coordinator that runs jobs (docs/scenes.md)."""
