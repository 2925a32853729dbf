from gateway_fixtures import gateway_service  # noqa: F401  (shared fixtures)
from model_fixtures import manifest, reference_dir, tiny, treesat  # noqa: F401  (shared fixtures)
from redis_fixture import key_prefix, redis_client, redis_url  # noqa: F401  (shared fixtures)
from training_fixtures import synthetic_datasets  # noqa: F401  (shared fixtures)
