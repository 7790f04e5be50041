"""Keeps the unit layer what tests/conftest.py says it is: no Redis server, no Keras model, no appliance."""

from __future__ import annotations

import pytest

SERVER_FIXTURES = frozenset(
    {"redis_socket", "redis_client", "redis_settings", "tiny_model", "make_settings", "start_appliance"}
)
"""Fixtures that start a server or build a model: they belong to tests/integration and tests/process."""


def pytest_runtest_setup(item: pytest.Item) -> None:
    used = SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ()))
    if used:
        pytest.fail(f"a unit test may not use {sorted(used)}: move it to tests/integration", pytrace=False)
