"""The Makefile's entry points with inputs a user types: ``make demo FACES=...``."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")
@pytest.mark.parametrize("faces", ["/tmp/x/St Mary's staff", '/tmp/a "b" $HOME `c`; d'])
def test_make_demo_passes_any_faces_path_as_one_argument(tmp_path: Path, faces: str) -> None:
    """`make demo FACES="/tmp/x/St Mary's staff"` failed in /bin/sh (`Unterminated quoted
    string`: the recipe put the path in single quotes)."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    cli = venv / "bin" / "fedface-edge"  # stands in for the demo: prints its arguments
    cli.write_text("#!/bin/sh\nfor a in \"$@\"; do printf '<%s>\\n' \"$a\"; done\n")
    cli.chmod(0o755)
    # newer than pyproject.toml: `setup` has nothing to do
    (venv / ".fedface-installed").touch()
    proc = subprocess.run(["make", "-s", "-C", str(REPO_ROOT), "demo", f"VENV={venv}",
                           f"FACES={faces}"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["<demo>", "<--faces>", f"<{faces}>"]
