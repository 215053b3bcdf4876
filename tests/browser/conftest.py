"""Level ``browser``: the kiosk page in a real headless Chromium (its ``browser`` fixture is here).
Marked ``browser`` (``pytest -m browser``)."""

from pathlib import Path

import pytest

from tests.support.kiosk_browser import browser  # noqa: F401  (fixture)
from tests.support.levels import mark_level


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark_level(items, Path(__file__).parent, "browser")
