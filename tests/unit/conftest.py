"""Level ``unit``: one package at a time, in process: real models, real CKKS, real files; no broker.
Marked ``unit`` (``pytest -m unit``)."""

from pathlib import Path

import pytest

from tests.support.levels import mark_level


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark_level(items, Path(__file__).parent, "unit")
