"""helper-58: `run` on a live source that could not be opened yet (an IP camera that
boots slower than the box after a power cut) stopped at once, exit 6, and systemd gave up
after five starts. A live source is now tried again until it opens, as the kiosk does;
a file or folder that is not there still fails at once. The live source here is a
video file replayed as a camera (`file:...?live=1`) that appears a few seconds late."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import cv2


def _write_clip(path: Path, lfw_dir: Path) -> None:
    part = path.with_suffix(".part.avi")
    writer = cv2.VideoWriter(str(part), cv2.VideoWriter.fourcc(*"MJPG"), 10.0, (250, 250))
    assert writer.isOpened()
    photo = cv2.imread(str(lfw_dir / "Tony_Blair" / "Tony_Blair_0001.jpg"))
    for _ in range(10):
        writer.write(photo)
    writer.release()
    os.replace(part, path)  # whole, at once: the camera "comes up"


def test_run_waits_for_a_live_source_that_comes_up_late(tmp_path: Path,
                                                        lfw_dir: Path) -> None:
    clip = tmp_path / "camera.avi"
    run = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "--data-dir", str(tmp_path / "box"), "run",
         "--per-frame", "--source", f"file:{clip}?live=1", "--max-frames", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        assert run.stderr is not None
        first = run.stderr.readline()  # the first failed try, said at once
        assert f"warning: video source 'file:{clip}?live=1': {clip} does not exist" in first, \
            first
        assert "trying again in 1 s (Ctrl-C stops)" in first, first
        assert run.poll() is None  # still waiting, not exit 6
        time.sleep(2)
        _write_clip(clip, lfw_dir)
        out, err = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, first + err
    assert "5 frames, 5 faces" in err, err
    assert f"video source file:{clip}?live=1 is up" in err, err  # said when it came
    assert len(out.splitlines()) == 5  # the events, on stdout


def test_a_missing_file_or_folder_still_fails_at_once(tmp_path: Path) -> None:
    for source in (str(tmp_path / "clip.avi"), f"dir:{tmp_path / 'frames'}"):
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "edge.cli", "--data-dir",
                               str(tmp_path / "box"), "run", "--source", source],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 6, done.stderr
        assert "trying again" not in done.stderr and time.monotonic() - started < 60
