"""Level ``integration``: parts working together: a real Mosquitto, several processes, edge and
aggregator in one test. Marked ``integration`` (``pytest -m integration``)."""

from pathlib import Path

import pytest

from tests.support.levels import mark_level


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark_level(items, Path(__file__).parent, "integration")
