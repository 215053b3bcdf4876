"""``fedface-edge run`` recognises once per visit: a generated kiosk video (held-out LFW
photos walking in front of the camera) through the real models, three events per visit."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import cv2
import pytest
from typer.testing import CliRunner

from bench.common.kiosk_video import KioskVideo, kiosk_videos
from edge.cli import app


def write_video(video: KioskVideo, path: Path) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), video.fps,
                             (640, 480))
    assert writer.isOpened()
    for frame in video.frames():
        writer.write(frame)
    writer.release()
    return path


@pytest.fixture
def kiosk_box(tmp_path: Path, lfw_dir: Path) -> tuple[Path, KioskVideo]:
    """A box with the 'passers' scenario's enrolled visitors (photo 1 each; the video
    shows later photos), and that scenario, 4 s long."""
    video = next(v for v in kiosk_videos(lfw_dir, seed=0, seconds=4.0) if v.name == "passers")
    data_dir = tmp_path / "box"
    for person in video.enrolled_people():
        photo = lfw_dir / person / f"{person}_0001.jpg"
        result = CliRunner().invoke(app, ["--data-dir", str(data_dir), "enroll", person,
                                          str(photo)])
        assert result.exit_code == 0, result.output
    return data_dir, video


def test_run_writes_three_events_per_visit_with_the_best_crop(
        kiosk_box: tuple[Path, KioskVideo], tmp_path: Path) -> None:
    data_dir, video = kiosk_box
    source = write_video(video, tmp_path / "kiosk.avi")
    events_file = tmp_path / "visits.jsonl"
    result = CliRunner().invoke(app, ["--data-dir", str(data_dir), "run", "--source",
                                      str(source), "--events", str(events_file)])
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in events_file.read_text().splitlines()]
    by_visit: dict[str, list[dict[str, object]]] = {}
    for event in events:
        by_visit.setdefault(str(event["visit"]), []).append(event)
    for visit_events in by_visit.values():  # each visit: started, identified, ended
        assert [e["event"] for e in visit_events] == ["visit_started", "visit_identified",
                                                      "visit_ended"]
        ended = visit_events[-1]
        assert 1 <= int(ended["attempts"]) <= 6  # type: ignore[call-overload]
        crop = Path(str(ended["best_crop"]))
        assert crop.parent == data_dir / "visits"
        assert stat.S_IMODE(os.stat(crop).st_mode) == 0o600
        assert cv2.imread(str(crop)).shape == (112, 112, 3)
    names = {str(v[-1]["name"]) for v in by_visit.values()}
    truth = {p.person if p.enrolled else "unknown" for p in video.visits}
    assert names == truth, (names, truth)  # two enrolled passers-by and one stranger
    assert len(by_visit) <= len(video.visits) + 1  # a visit split in two at most once
