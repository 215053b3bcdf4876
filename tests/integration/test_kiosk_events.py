"""``fedface-edge kiosk serve`` writes and publishes the visit events as ``run`` does: a
kiosk box keeps its events log and its Home Assistant entities (a walkthrough found that
running the kiosk instead of ``run``, as the docs say to, silently lost both)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.common.kiosk_video import kiosk_videos
from edge.cli import app
from tests.support.broker import MosquittoBroker, free_port
from tests.support.kiosk_video_file import write_video
from tests.support.mqtt_listener import Listener


@pytest.mark.mosquitto
def test_the_kiosk_writes_and_publishes_its_visit_events(
        tmp_path: Path, lfw_dir: Path, mosquitto: MosquittoBroker) -> None:
    video = next(v for v in kiosk_videos(lfw_dir, seed=0, seconds=4.0) if v.name == "three")
    data_dir = tmp_path / "box"
    for person in video.enrolled_people():
        result = CliRunner().invoke(app, ["--data-dir", str(data_dir), "enroll", person,
                                          str(lfw_dir / person / f"{person}_0001.jpg")])
        assert result.exit_code == 0, result.output
    cli = [sys.executable, "-m", "edge.cli", "--data-dir", str(data_dir)]
    subprocess.run([*cli, "kiosk", "set-password"], input="correct horse battery\n",
                   text=True, check=True, timeout=120, capture_output=True)
    source = write_video(video, tmp_path / "kiosk.avi")
    events_file, port = tmp_path / "kiosk-events.jsonl", free_port()
    listener = Listener("127.0.0.1", mosquitto.port, ["fedface/acme/lobby-1/#",
                                                       "homeassistant/#"])
    kiosk = subprocess.Popen(
        [*cli, "kiosk", "serve", "--source", str(source), "--port", str(port),
         "--events", str(events_file), "--mqtt-url", mosquitto.url, "--fed", "acme",
         "--box-id", "lobby-1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        deadline = time.monotonic() + 240
        while True:  # the file is read once: the camera ends, the page stays up
            assert kiosk.poll() is None, kiosk.communicate()[1]
            assert time.monotonic() < deadline, "the kiosk never reported its source ended"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=5):
                    pass
            except OSError:
                time.sleep(0.5)
                continue
            text = events_file.read_text() if events_file.exists() else ""
            ended = sum('"visit_ended"' in line for line in text.splitlines())
            if ended >= len(video.visits):  # every visit ended with the source
                break
            time.sleep(0.5)
        kiosk.send_signal(signal.SIGTERM)
        _, stderr = kiosk.communicate(timeout=60)
        assert kiosk.returncode == 0, stderr
        written = [json.loads(line) for line in events_file.read_text().splitlines()]

        def all_events(got: list[tuple[str, bytes, bool]]) -> bool:
            return sum(t.endswith("/events") for t, _, _ in got) >= len(written)

        got = listener.collect_until(all_events)
    finally:
        listener.close()
        if kiosk.poll() is None:
            kiosk.kill()
    by_visit: dict[str, list[str]] = {}
    for event in written:
        by_visit.setdefault(str(event["visit"]), []).append(str(event["event"]))
    assert all(kinds == ["visit_started", "visit_identified", "visit_ended"]
               for kinds in by_visit.values()), by_visit
    names = {str(e["name"]) for e in written if e["event"] == "visit_ended"}
    truth = {p.person if p.enrolled else "unknown" for p in video.visits}
    assert names == truth, (names, truth)
    assert os.stat(events_file).st_mode & 0o777 == 0o600  # events name people
    on_wire = [json.loads(p) for t, p, _ in got if t == "fedface/acme/lobby-1/events"]
    assert on_wire == written  # the same events, in the same order
    topics = {t for t, _, _ in got}
    assert "homeassistant/binary_sensor/fedface_lobby-1/unknown_face/config" in topics
    assert "fedface/acme/lobby-1/state" in topics


def test_visit_outputs_with_per_frame_are_one_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["--data-dir", str(tmp_path / "box"), "kiosk", "serve",
                                      "--source", str(tmp_path), "--per-frame", "--events",
                                      str(tmp_path / "e.jsonl")])
    assert result.exit_code == 2, result.output
    assert "--per-frame has no visits" in result.stderr
    assert not (tmp_path / "e.jsonl").exists()
