"""Level ``e2e``: the users' journeys: the documented CLI commands as real processes, across roles.
Marked ``e2e`` (``pytest -m e2e``)."""

from pathlib import Path

import pytest

from tests.support.levels import mark_level


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark_level(items, Path(__file__).parent, "e2e")
