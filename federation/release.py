"""Which FedFace release runs here: ``fedface-edge --version``, ``fedface-aggregator
--version``, and the two lines ``upgrade.sh`` prints before and after.

The version number alone cannot tell two releases apart (every one so far is 0.1.0), and
an upgrade that left the old code in place looked like one that worked (helper-40). So a
wheel install is named by its build: the first hex digits of the SHA-256 of the
package's RECORD, which lists every installed file with its own SHA-256, so two
installs are the same build exactly when they hold the same files. A source checkout
(the development venv) is named by its git commit instead. Each also says the version of
its encrypted-update format: releases of the same one work together, in any mix of
aggregator and boxes (docs/operations.md, "Upgrading").
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import subprocess
from pathlib import Path

DIST = "fedface"


@functools.cache  # what this process runs: an upgrade restarts it
def release() -> str:
    """``fedface 0.1.0 (build 1a2b3c4d5e6f; encrypted updates v2)``, or ``(source
    checkout at DIR, commit C; ...)``."""
    from federation.crypto.packing import UPDATE_VERSION

    updates = f"encrypted updates v{UPDATE_VERSION}"
    try:
        dist = importlib.metadata.distribution(DIST)
    except importlib.metadata.PackageNotFoundError:
        return f"{DIST} (not installed: {_source_build()}; {updates})"
    record = dist.read_text("RECORD") or ""
    # a wheel's install runs the files its RECORD lists (this one among them); an
    # editable install (the dev venv) runs the checkout's, which its RECORD does not list
    installed = Path(str(dist.locate_file(f"federation/{Path(__file__).name}")))
    if f"federation/{Path(__file__).name}," in record \
            and installed.resolve() == Path(__file__).resolve():
        build = f"build {hashlib.sha256(record.encode()).hexdigest()[:12]}"
    else:
        build = _source_build()
    return f"{DIST} {dist.version} ({build}; {updates})"


def _source_build() -> str:
    checkout = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"source checkout at {checkout}" + (f", commit {commit}" if commit else "")
