"""`python -m bench.edge.kiosk_videos` (docs/operations.md, "Frame sources"): video files
`run` reads, with their ground truth and the people to enrol."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest

from bench.edge import kiosk_videos


def test_it_writes_playable_videos_their_truth_and_the_enrol_commands(
        tmp_path: Path, lfw_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kiosk_videos.main(["--out", str(tmp_path), "--lfw", str(lfw_dir), "--seconds", "1"])
    videos = sorted(tmp_path.glob("*.avi"))
    assert [v.stem for v in videos] == ["approach", "crossing", "passers", "swap", "three"]
    for video in videos:
        truth = json.loads(video.with_suffix(".json").read_text())
        capture = cv2.VideoCapture(str(video))
        count = 0
        while capture.read()[0]:
            count += 1
        capture.release()
        assert count == truth["frames"] == 30 and truth["fps"] == 30.0
        assert all({"person", "enrolled", "first_frame", "last_frame"} <= set(v)
                   for v in truth["visits"])
    out = capsys.readouterr().out
    enrolled = {v["person"] for video in videos
                for v in json.loads(video.with_suffix(".json").read_text())["visits"]
                if v["enrolled"]}
    assert all(f"fedface-edge enroll {p} " in out for p in enrolled)
