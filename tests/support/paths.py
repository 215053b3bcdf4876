"""Where the checkout is, for tests that run its files (docs, scripts, python -m)."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
