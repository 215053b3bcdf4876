"""Child processes of a bench: start ``python -m MODULE``, wait for its ready line, stop
it, read its JSON report lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

import psutil

REPO = Path(__file__).resolve().parents[2]


def tmpdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def spawn_module(module: str, *args: str, stderr: IO[str] | int | None = subprocess.PIPE
                 ) -> subprocess.Popen[str]:
    """``python -m module args`` in the repository, unbuffered, stdout piped as text."""
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=stderr, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_ready(proc: subprocess.Popen[str], what: str = "box") -> None:
    """Block until a child printed its ready line (after any precomputation)."""
    assert proc.stdout is not None
    for line in proc.stdout:
        if '"ready"' in line:
            return
    raise RuntimeError(f"{what} exited before it was ready (exit {proc.wait()})")


def stop(proc: subprocess.Popen[str], timeout: float = 10) -> tuple[str, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()


def last_json(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return dict(json.loads(line))
    raise ValueError(f"no JSON line in output: {text[-2000:]}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a running process."""
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)
