"""Test levels: each level's conftest marks what is collected below its folder."""

from __future__ import annotations

from pathlib import Path

import pytest


def mark_level(items: list[pytest.Item], folder: Path, level: str) -> None:
    """Add the ``level`` marker to the items whose file lies below ``folder``; the hook
    sees every collected item, not only its own folder's."""
    marker = getattr(pytest.mark, level)
    for item in items:
        if item.path.is_relative_to(folder):
            item.add_marker(marker)
