"""helper-58: `run --events` on a full disk died ('no space left on the device writing a
file', hint `df -h .`, the working directory), recognition stopped and the file's last
line was cut in half. Now the file keeps whole lines only, the run goes on, the events
wait in memory and are written, in order, once there is room again. On a real, tiny
tmpfs (root mounts one; an ordinary user skips)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge.cli import app
from edge.serving.events import EventWriter
from tests.support.tmpfs import mounted_tmpfs


class Line:
    def __init__(self, n: int) -> None:
        self.n = n

    def to_json(self) -> str:
        return json.dumps({"n": self.n, "pad": "x" * 200})


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "tiny", "64k") as disk:
        yield disk


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 512)
    except OSError:
        pass  # full
    finally:
        os.close(fd)
    return filler


def lines(path: Path) -> list[int]:
    return [json.loads(line)["n"] for line in path.read_text().splitlines()]  # each whole


def test_a_full_disk_holds_the_events_and_writes_them_when_there_is_room(
        tiny_disk: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    events = tiny_disk / "events.jsonl"
    with open(events, "a", encoding="utf-8", buffering=1) as stream:
        writer = EventWriter(stream)
        writer.write(Line(0))
        filler = fill(tiny_disk)
        for n in range(1, 40):
            writer.write(Line(n))  # never raises
        assert writer.held > 0, "the disk never filled"
        assert f"cannot write events to {events}: No space left on device" in caplog.text
        assert caplog.text.count("cannot write events") == 1  # said once, not per event
        written = lines(events)
        assert written == list(range(len(written)))  # whole lines, in order, no half one
        filler.unlink()
        writer.write(Line(40))
        assert writer.held == 0 and writer.dropped == 0
        assert f"events are written to {events} again" in caplog.text
        writer.close()
    assert lines(events) == list(range(41))
    assert "lost" not in caplog.text


def test_run_goes_on_when_its_events_file_fills_the_disk(
        tiny_disk: Path, tmp_path: Path, lfw_dir: Path) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    for n in range(1, 7):
        shutil.copy(lfw_dir / "George_W_Bush" / f"George_W_Bush_{n:04d}.jpg", frames)
    fill(tiny_disk)
    events = tiny_disk / "events.jsonl"
    result = CliRunner().invoke(app, ["--data-dir", str(tmp_path / "box"), "run",
                                      "--per-frame", "--source", f"dir:{frames}",
                                      "--events", str(events)])
    assert result.exit_code == 0, result.output
    assert "6 frames, 6 faces" in result.stderr, result.stderr
    assert f"cannot write events to {events}: No space left on device" in result.stderr
    assert f"6 event(s) could not be written to {events} and are lost" in result.stderr
    assert events.read_text() == "" or all(json.loads(x) for x in
                                           events.read_text().splitlines())
