"""The per-visit kiosk in a real headless Chromium: a generated kiosk video (held-out LFW
photos: one enrolled visitor and two strangers, 4 s at 30 fps) plays once; the page lists
one line per visit with its best crop and one alert per unknown visit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import pytest

from bench.common.kiosk_video import KioskVideo, kiosk_videos
from edge.kiosk import Kiosk
from edge.vision.pipeline import FacePipeline
from tests.support.kiosk import make_kiosk
from tests.support.kiosk_browser import KIOSK_VIEW, SHOTS, log_in, status, wait_for


@pytest.fixture(scope="module")
def video(lfw_dir: Path) -> KioskVideo:
    return next(v for v in kiosk_videos(lfw_dir, seed=0, seconds=4.0) if v.name == "three")


@pytest.fixture(scope="module")
def kiosk(tmp_path_factory: pytest.TempPathFactory, kiosk_pipeline: FacePipeline,
          video: KioskVideo, lfw_dir: Path) -> Iterator[Kiosk]:
    frames = tmp_path_factory.mktemp("kiosk-video")
    for index, frame in enumerate(video.frames()):
        cv2.imwrite(str(frames / f"{index:04d}.png"), frame)
    built = make_kiosk(tmp_path_factory.mktemp("kiosk-data"), frames, kiosk_pipeline,
                       fps=video.fps, loop=False, per_visit=True)
    for person in video.enrolled_people():  # photo 1; the video shows a later one
        face = kiosk_pipeline.embed_image_file(lfw_dir / person / f"{person}_0001.jpg")
        built.services.gallery.enroll(person, [face.crop], face.embedding[None],
                                      face.model_version)
    running = built.start()
    yield running
    running.stop()
    built.services.gallery.close()


def test_the_page_lists_visits_with_their_best_crop(browser: Any, kiosk: Kiosk,
                                                     video: KioskVideo) -> None:
    context = browser.new_context(viewport=KIOSK_VIEW)
    page = context.new_page()
    log_in(page, kiosk.url)
    (enrolled,) = video.enrolled_people()
    strangers = sum(1 for p in video.visits if not p.enrolled)
    # the video plays once (4 s); every visit has ended when the source has
    wait_for(lambda: status(page)["worker"]["state"] == "ended", 60, "the video to end")
    page.reload()
    page.wait_for_selector(f"#recent .who:text-is('{enrolled}')", timeout=15_000)
    recent = page.locator("#recent li.entry")
    assert recent.count() == 1
    assert "1 visit" in recent.first.inner_text()
    alerts = page.locator("#alerts li.entry")
    assert alerts.count() == strangers  # one alert per unknown visit, not per frame
    for index in range(strangers):
        text = alerts.nth(index).inner_text()
        assert "Unknown face" in text and "seen 1 visit" in text
    # the thumbnails are the visits' best crops, loaded by the browser
    wait_for(lambda: page.evaluate(
        "[...document.querySelectorAll('#recent img, #alerts img')]"
        ".every(i => i.complete && i.naturalWidth === 112)"), 10, "the crop thumbnails")
    data = status(page)
    assert [r["seen"] for r in data["recent"]] == ["1 visit"]
    assert data["unknown_sightings"] == strangers  # counted per visit
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "kiosk-visits.png"))
    context.close()
