from model_fixtures import manifest, reference_dir, tiny, treesat  # noqa: F401  (shared fixtures)
from redis_fixture import key_prefix, redis_client, redis_url  # noqa: F401  (shared fixtures)
