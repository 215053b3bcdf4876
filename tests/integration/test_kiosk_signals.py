"""A real ``fedface-edge kiosk serve`` stops at once, exit 0, on two signals close
together: `timeout`'s SIGTERM, a double Ctrl-C (a new user's kiosk hung there for good,
deaf to every later signal; federation.signals). tests/unit/edge/test_serve_signals.py
makes each case on purpose; this is the product's own process, with its camera, worker
and HTTP threads, a few times."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from edge.kiosk.auth import PasswordStore

# first, second, microseconds between (three: each start of the kiosk costs seconds of
# the suite, and tests/unit/edge/test_serve_signals.py makes the hang on purpose)
BURSTS = [(signal.SIGTERM, signal.SIGINT, 0), (signal.SIGINT, signal.SIGINT, 50),
          (signal.SIGTERM, signal.SIGTERM, 0)]
STOP_S = 10.0  # a stop takes well under a second; a hang never ends


def test_the_kiosk_stops_on_two_signals_close_together(tmp_path: Path, lfw_dir: Path
                                                       ) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    for photo in sorted((lfw_dir / "George_W_Bush").glob("*.jpg"))[:4]:
        shutil.copy(photo, frames)
    data_dir = tmp_path / "box"
    PasswordStore(data_dir).set("correct horse battery staple")
    cli = [sys.executable, "-m", "edge.cli", "--data-dir", str(data_dir), "kiosk", "serve",
           "--source", f"dir:{frames}?fps=5&loop=1", "--port", "0"]
    for first, second, gap_us in BURSTS:
        kiosk = subprocess.Popen(cli, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 text=True, env=os.environ.copy())
        try:
            assert kiosk.stderr is not None
            said = []
            for line in kiosk.stderr:  # the banner comes once its handlers are in place
                said.append(line)
                if "kiosk on http://" in line:
                    break
            assert kiosk.poll() is None, "".join(said)
            time.sleep(0.3)  # the worker is reading frames
            os.kill(kiosk.pid, first)
            until = time.perf_counter() + gap_us / 1e6
            while time.perf_counter() < until:
                pass
            os.kill(kiosk.pid, second)
            try:
                _, rest = kiosk.communicate(timeout=STOP_S)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"the kiosk did not stop within {STOP_S:.0f} s of "
                                     f"{first.name} then {second.name}") from None
            assert kiosk.returncode == 0, "".join(said) + rest
            assert "Traceback" not in rest, rest
        finally:
            if kiosk.poll() is None:
                kiosk.kill()
                kiosk.wait()
