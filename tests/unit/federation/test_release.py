"""``--version`` of both CLIs: which release runs. A wheel install is named by its build
(tests/e2e/test_firmware_install.py upgrades one and reads it); this checkout, which the
test venv runs, by its commit."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

from federation.release import release

REPO = Path(__file__).resolve().parents[3]


def _head() -> str:
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"],
                          capture_output=True, text=True, check=False)
    if head.returncode != 0:
        pytest.skip("this tree is not a git checkout")
    return head.stdout.strip()


def test_a_source_checkout_is_named_by_its_commit() -> None:
    version = importlib.metadata.version("fedface")
    assert release() == (f"fedface {version} (source checkout at {REPO}, commit {_head()}; "
                         "encrypted updates v2)")


@pytest.mark.parametrize("cli", ["fedface-edge", "fedface-aggregator"])
def test_both_clis_say_it(cli: str) -> None:
    out = subprocess.run([str(Path(sys.executable).parent / cli), "--version"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == release()
