"""The kiosk's frame source: a live source that stops delivering is reported as lost,
not shown as live and not enrolled from."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge.kiosk import Kiosk
from edge.vision.frame_source import FrameSource
from edge.vision.pipeline import FacePipeline, read_image
from tests.support.kiosk import (
    A_FRAMES,
    make_kiosk,
)


class UnpluggedCamera(FrameSource):
    """A live camera that delivers ``frames`` and then hangs, as a V4L2 camera does while
    its capture sleeps through reconnect attempts after being unplugged."""

    live = True

    def __init__(self, frames: list[np.ndarray]) -> None:
        super().__init__("v4l2:test")
        self.frames = list(frames)
        self.unplugged = threading.Event()
        self.released = threading.Event()

    def _read(self) -> np.ndarray | None:
        if self.frames:
            time.sleep(0.05)
            return self.frames.pop(0)
        self.unplugged.set()
        self.released.wait(60)
        return None


@pytest.fixture
def unplugged(tmp_path: Path, kiosk_frames: Path,
              kiosk_pipeline: FacePipeline) -> Iterator[tuple[Kiosk, UnpluggedCamera]]:
    kiosk = make_kiosk(tmp_path / "data", kiosk_frames, kiosk_pipeline, frame_stale_s=1.0)
    camera = UnpluggedCamera([read_image(p) for p in sorted(kiosk_frames.iterdir())[:2]])
    kiosk.services.worker.source = camera
    kiosk.services.desk.enrol_uploads("Person A", [
        (p.name, p.read_bytes()) for p in sorted(kiosk_frames.iterdir())[A_FRAMES - 2:A_FRAMES]])
    kiosk.start()
    yield kiosk, camera
    camera.released.set()
    kiosk.stop()


def wait_for(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_unplugged_camera_is_reported_lost_and_not_enrolled(
        unplugged: tuple[Kiosk, UnpluggedCamera]) -> None:
    kiosk, camera = unplugged
    worker = kiosk.services.worker
    wait_for(camera.unplugged.is_set, 60, "the camera to deliver its frames")
    latest = worker.latest()
    assert latest is not None and latest.matches[0].name == "Person A"
    wait_for(lambda: worker.status().state == "lost", 10, "the camera to count as lost")
    assert "no new image" in worker.status().message

    client = kiosk.app.test_client()
    with client.session_transaction() as session:  # a logged-in session
        session.update(user="staff", sid="s1", pwgen=kiosk.services.passwords.generation(),
                       last_seen=time.time())
    status = client.get("/api/status").get_json()
    assert status["live"] is False and status["in_view"] == []
    assert status["notice"].startswith("NOT LIVE - Camera lost")
    frozen = client.get("/live.jpg")
    assert frozen.headers["X-Live"] == "0" and frozen.headers["X-In-View"] != "Person%20A"
    page = client.get("/").get_data(as_text=True)
    assert "NOT LIVE - Camera lost" in page and 'id="in-view">no live image<' in page

    desk = kiosk.services.desk
    desk.start_camera("s1", "Person A")
    started = time.monotonic()
    verdict = desk.take_shot("s1")
    assert not verdict.ok and "camera is not live" in verdict.message
    assert "Camera lost" in verdict.message
    assert time.monotonic() - started < 10  # it answers; it never leaves "wait a moment"
    pending = desk.pending("s1")
    assert pending is not None and pending.shots == []


def test_a_camera_that_never_delivered_is_not_said_to_show_its_last_image(
        tmp_path: Path, kiosk_frames: Path, kiosk_pipeline: FacePipeline) -> None:
    # helper-61: a camera unplugged before the kiosk started gave "NOT LIVE - Camera lost
    # ... The picture shown is the last image." over an empty picture
    kiosk = make_kiosk(tmp_path / "data", kiosk_frames, kiosk_pipeline, frame_stale_s=1.0)
    camera = UnpluggedCamera([])
    kiosk.services.worker.source = camera
    kiosk.start()
    try:
        worker = kiosk.services.worker
        wait_for(lambda: worker.status().state == "lost", 20, "the camera to count as lost")
        client = kiosk.app.test_client()
        with client.session_transaction() as session:
            session.update(user="staff", sid="s1", pwgen=kiosk.services.passwords.generation(),
                           last_seen=time.time())
        status = client.get("/api/status").get_json()
        assert status["live"] is False and status["seq"] == 0
        assert status["notice"].startswith("NOT LIVE - Camera lost"), status["notice"]
        assert "last image" not in status["notice"]
        assert status["notice"].endswith("No image has come from the camera since the kiosk "
                                         "started."), status["notice"]
        page = client.get("/").get_data(as_text=True)
        assert "No image has come from the camera" in page and "last image" not in page
        assert client.get("/live.jpg").status_code == 503
    finally:
        camera.released.set()
        kiosk.stop()
