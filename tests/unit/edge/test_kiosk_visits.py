"""The per-visit kiosk on generated kiosk video (held-out LFW photos, real models): one
line per visit with its best crop, one alert per unknown visit; a camera enrolment still
gets a frame recognised in full."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from bench.common.kiosk_video import KioskVideo, kiosk_videos
from edge.kiosk import Kiosk
from edge.vision.pipeline import FacePipeline
from tests.support.kiosk import kiosk_pipeline, make_kiosk  # noqa: F401  (fixture)


@pytest.fixture
def three(lfw_dir: Path) -> KioskVideo:
    """Three at once for 4 s: one enrolled visitor, two strangers (staggered)."""
    return next(v for v in kiosk_videos(lfw_dir, seed=0, seconds=4.0) if v.name == "three")


def _kiosk(tmp_path: Path, pipeline: FacePipeline, video: KioskVideo, lfw_dir: Path,
           **settings: object) -> Kiosk:
    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "0000.png"), np.zeros((480, 640, 3), np.uint8))
    built = make_kiosk(tmp_path / "data", frames, pipeline, per_visit=True, **settings)
    for person in video.enrolled_people():
        photo = lfw_dir / person / f"{person}_0001.jpg"
        face = pipeline.embed_image_file(photo)
        built.services.gallery.enroll(person, [face.crop], face.embedding[None],
                                      face.model_version)
    return built


@pytest.fixture
def kiosk(tmp_path: Path, kiosk_pipeline: FacePipeline, three: KioskVideo,  # noqa: F811
          lfw_dir: Path) -> Iterator[Kiosk]:
    built = _kiosk(tmp_path, kiosk_pipeline, three, lfw_dir)
    yield built
    built.services.gallery.close()


def test_the_lists_show_one_line_per_visit_and_one_alert_per_unknown_visit(
        kiosk: Kiosk, three: KioskVideo) -> None:
    worker, activity = kiosk.services.worker, kiosk.services.activity
    for index, frame in enumerate(three.frames()):
        worker.process_frame(index, index / three.fps, frame)
    worker.close_visits()
    recent = activity.recent()
    assert sorted(str(e.name) for e in recent) == three.enrolled_people()
    assert all(e.count == 1 and e.seen == "1 visit" for e in recent)
    alerts = activity.alerts()  # the two strangers: one alert each, however many frames
    assert len(alerts) == 2 and all(a.name is None and a.seen == "1 visit" for a in alerts)
    assert activity.unknown_sightings == 2
    for entry in [*recent, *alerts]:  # the visit's best crop, as a JPEG thumbnail
        thumb = cv2.imdecode(np.frombuffer(activity.thumbnail(entry.id) or b"", np.uint8),
                             cv2.IMREAD_COLOR)
        assert thumb is not None and thumb.shape == (112, 112, 3)
    assert alerts[0].crop is not None  # staff can enrol the stranger from the alert


def test_a_face_being_identified_is_in_view_not_nobody(kiosk: Kiosk,
                                                        three: KioskVideo) -> None:
    """Between a visit's start and its identification the picture boxes the face with
    "...": the caption says someone is being identified (it said "nobody")."""
    worker = kiosk.services.worker
    captions = []
    for index, frame in enumerate(three.frames()):
        worker.process_frame(index, index / three.fps, frame)
        latest = worker.latest()
        assert latest is not None
        captions.append(latest.caption())
        if index == 40:
            break
    assert captions[0] == "nobody"  # one detection is not a visit yet (min_hits)
    assert captions[1] == "1 being identified"
    assert captions[-1].startswith(three.enrolled_people()[0])  # named once identified


def test_a_stranger_taking_an_enrolled_visitor_s_place_raises_the_alert(
        tmp_path: Path, kiosk_pipeline: FacePipeline, lfw_dir: Path) -> None:  # noqa: F811
    """The enrolled visitor leaves and a stranger steps into the same spot 0.2 s later
    (one track for the tracker): the visitor's line, and one alert for the stranger."""
    swap = next(v for v in kiosk_videos(lfw_dir, seed=0, seconds=4.0) if v.name == "swap")
    built = _kiosk(tmp_path, kiosk_pipeline, swap, lfw_dir)
    try:
        worker, activity = built.services.worker, built.services.activity
        for index, frame in enumerate(swap.frames()):
            worker.process_frame(index, index / swap.fps, frame)
        worker.close_visits()
        assert [str(e.name) for e in activity.recent()] == swap.enrolled_people()
        alerts = activity.alerts()
        assert len(alerts) == 1 and alerts[0].name is None and alerts[0].seen == "1 visit"
    finally:
        built.services.gallery.close()


def test_a_camera_shot_gets_a_frame_recognised_in_full(kiosk: Kiosk,
                                                       three: KioskVideo) -> None:
    worker = kiosk.services.worker
    frames = list(three.frames())[:20]
    worker.process_frame(0, 0.0, frames[0])
    assert worker.latest() is not None and not worker.latest().full  # type: ignore[union-attr]
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(worker.fresh_frame(0, 5.0, 10.0)))
    worker._set_status("running")  # as the capture thread does when frames come
    waiter.start()
    for index, frame in enumerate(frames[1:], start=1):
        if not waiter.is_alive():
            break
        worker.process_frame(index, index / three.fps, frame)
        waiter.join(0.05)
    waiter.join(5)
    live = got[0]
    assert live is not None and live.full and len(live.faces) >= 1  # type: ignore[attr-defined]
    assert live.faces[0].embedding.shape == (128,)  # type: ignore[attr-defined]


def test_detecting_every_third_frame_gives_the_same_visits_for_a_third_of_the_detections(
        tmp_path: Path, kiosk_pipeline: FacePipeline, three: KioskVideo,  # noqa: F811
        lfw_dir: Path) -> None:
    kiosk = _kiosk(tmp_path, kiosk_pipeline, three, lfw_dir, detect_every=3)
    try:
        worker, activity = kiosk.services.worker, kiosk.services.activity
        frames = 0
        for index, frame in enumerate(three.frames()):
            worker.process_frame(index, index / three.fps, frame)
            frames += 1
        worker.close_visits()
        assert worker.visits is not None
        assert worker.visits.detections == -(-frames // 3)  # frames 0, 3, 6, ...
        assert sorted(str(e.name) for e in activity.recent()) == three.enrolled_people()
        assert len(activity.alerts()) == 2
    finally:
        kiosk.services.gallery.close()


def test_a_per_visit_camera_stays_live_while_frames_come_and_is_lost_when_they_stop(
        kiosk: Kiosk, three: KioskVideo) -> None:
    # per visit, most frames are not recognised in full; each one still shows the camera
    # is live (a kiosk once said "Camera lost" on a live camera once the machine had been
    # up longer than stale_after_s)
    worker = kiosk.services.worker
    worker._set_status("running")  # as the capture thread does when frames come
    for index, frame in enumerate(list(three.frames())[:5]):
        worker.process_frame(index, index / three.fps, frame)
        assert worker.status().state == "running" and worker.status().live
    assert worker.latest() is not None and not worker.latest().full  # type: ignore[union-attr]
    worker.stale_after_s = 0.2
    time.sleep(0.3)  # no new frame for longer than stale_after_s
    lost = worker.status()
    assert lost.state == "lost" and not lost.live and "no new image for 0 s" in lost.message
