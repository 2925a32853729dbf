import pytest
from gateway_fixtures import gateway_service  # noqa: F401  (shared fixtures)
from model_fixtures import manifest, reference_dir, tiny, treesat  # noqa: F401  (shared fixtures)
from redis_fixture import key_prefix, redis_client, redis_url  # noqa: F401  (shared fixtures)
from training_fixtures import synthetic_datasets  # noqa: F401  (shared fixtures)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The default run leaves the ``slow`` tier out (docs/testing.md). Any ``-m`` (``-m slow``, or
    ``-m "slow or not slow"`` for everything) or a test named by node id (``tests/x.py::test_y``) is an explicit
    choice, and then nothing is left out here."""
    if config.getoption("markexpr") or any("::" in arg for arg in config.args):
        return
    slow = [item for item in items if item.get_closest_marker("slow") is not None]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if item.get_closest_marker("slow") is None]
