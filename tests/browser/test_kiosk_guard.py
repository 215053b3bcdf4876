"""The security guard's kiosk journey in a real headless Chromium (issue 13, point 8).

- a frame source that ended leaves its last frame: the page must say NOT LIVE, with no
  "In view" names, and camera enrolment must refuse that frozen frame with a clear
  message (never a permanent "wait a moment");
- enrolling from the camera someone who is already enrolled under another name warns,
  with who and the score, and the guard can cancel;
- an unknown-face alert shows the face, the closest match and score, the times, and
  enrols that face under a name the guard types;
- the People page shows each person's photo.

Screenshots go to artifacts/screenshots/guard-*.png.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.config import EdgeSettings
from edge.gallery.store import Gallery
from edge.kiosk import Kiosk, KioskSettings, build_kiosk
from edge.kiosk.auth import PasswordStore
from edge.vision.pipeline import FacePipeline
from tests.support.kiosk import (
    A_FRAMES,
    KIOSK_PASSWORD,
    make_kiosk,
)
from tests.support.kiosk_browser import (
    KIOSK_VIEW,
    SHOTS,
    log_in,
    status,
    take_camera_shots,
    wait_for,
)

ENROLLED = "George W Bush"


def screenshot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_load_state("load")
    page.screenshot(path=str(SHOTS / f"guard-{name}.png"))


def image_loaded(page: Any, selector: str) -> bool:
    return bool(page.eval_on_selector(selector, "e => e.complete && e.naturalWidth > 0"))


@pytest.fixture
def ended_kiosk(tmp_path: Path, kiosk_frames: Path,
                kiosk_pipeline: FacePipeline) -> Iterator[Kiosk]:
    """A kiosk whose source is a folder played once: it ends after a few seconds."""
    data = tmp_path / "data"
    PasswordStore(data).set(KIOSK_PASSWORD)
    running = build_kiosk(EdgeSettings(data_dir=data), KioskSettings(port=0),
                          f"dir:{kiosk_frames}?fps=12", pipeline=kiosk_pipeline).start()
    yield running
    running.stop()


def test_ended_source_is_not_shown_live_and_not_enrolled(
        browser: Any, ended_kiosk: Kiosk) -> None:
    url = ended_kiosk.url
    context = browser.new_context(viewport=KIOSK_VIEW)
    page = context.new_page()
    log_in(page, url)
    wait_for(lambda: status(page)["worker"]["state"] == "ended", 60, "the source to end")
    current = status(page)
    assert current["seq"] > 0 and not current["live"] and current["in_view"] == []
    # the page script notices it too, without a reload
    page.wait_for_selector("#source-banner:not(.hidden)", timeout=10_000)
    assert "NOT LIVE" in page.inner_text("#source-banner")
    assert "ended" in page.inner_text("#source-banner")
    assert page.inner_text("#in-view") == "no live image"
    assert "frozen" in (page.get_attribute("#live", "class") or "")
    page.reload()
    page.wait_for_selector("#source-banner:not(.hidden)")
    assert page.inner_text("#in-view") == "no live image"
    screenshot(page, "ended-live")

    # camera enrolment refuses the frozen frame, every time, with a clear message
    page.click("nav >> text=Enrol")
    page.fill("#camera-name", "Ada Lovelace")
    page.click("text=Start camera enrolment")
    page.wait_for_url(url + "/enrol/camera")
    assert page.is_visible("#source-banner")
    for _ in range(2):
        page.click("#take-shot")
        page.wait_for_load_state()
        message = page.inner_text("#feedback li:first-child")
        assert "camera is not live" in message and "ended" in message, message
        assert "wait a moment" not in page.content().lower()
    assert page.locator(".shots img").count() == 0
    assert not page.is_enabled("#save")
    screenshot(page, "ended-enrol")
    with Gallery.open(ended_kiosk.services.data_dir) as gallery:
        assert gallery.people() == []
    context.close()


@pytest.fixture(scope="module")
def guarded_kiosk(tmp_path_factory: pytest.TempPathFactory, kiosk_frames: Path,
                  kiosk_pipeline: FacePipeline) -> Iterator[Kiosk]:
    """A looping camera with PERSON_A already enrolled (from two of the frames)."""
    built = make_kiosk(tmp_path_factory.mktemp("guard-data"), kiosk_frames, kiosk_pipeline)
    frames = sorted(kiosk_frames.iterdir())[A_FRAMES - 2:A_FRAMES]
    built.services.desk.enrol_uploads(ENROLLED, [(p.name, p.read_bytes()) for p in frames])
    running = built.start()
    yield running
    running.stop()


@pytest.fixture
def page(browser: Any, guarded_kiosk: Kiosk) -> Iterator[Any]:
    context = browser.new_context(viewport=KIOSK_VIEW)
    opened = context.new_page()
    log_in(opened, guarded_kiosk.url)
    yield opened
    context.close()


def people(kiosk: Kiosk) -> dict[str, int]:
    with Gallery.open(kiosk.services.data_dir) as gallery:
        return {p.name: p.crops for p in gallery.people()}


def test_camera_enrolment_of_an_enrolled_face_warns(page: Any, guarded_kiosk: Kiosk) -> None:
    url = guarded_kiosk.url
    page.click("nav >> text=Enrol")
    page.fill("#camera-name", "John Smith")
    page.click("text=Start camera enrolment")
    page.wait_for_url(url + "/enrol/camera")
    feedback = take_camera_shots(page, guarded_kiosk.services.settings.enrol_shots)
    assert any(f"looks like {ENROLLED}" in line for line in feedback), feedback
    page.click("#save")
    page.wait_for_selector("#duplicate-warning")
    warning = page.inner_text("#duplicate-warning")
    # who, and the score (1.00 when a shot is one of the frames George was enrolled from)
    assert re.search(rf"look like {ENROLLED}, .*\(similarity [01]\.\d\d;", warning), warning
    assert page.is_visible("#confirm-save") and page.is_visible("#cancel-save")
    screenshot(page, "duplicate")
    page.click("#cancel-save")
    page.wait_for_url(url + "/enrol")
    assert "nothing was stored" in page.inner_text("#flashes")
    assert people(guarded_kiosk) == {ENROLLED: 2}


def test_unknown_face_alert_can_be_reviewed_and_enrolled(page: Any,
                                                         guarded_kiosk: Kiosk) -> None:
    url = guarded_kiosk.url
    page.wait_for_selector("#alerts li.entry .review", timeout=20_000)
    wait_for(lambda: image_loaded(page, "#alerts li.entry img"), 10, "the alert's face")
    detail = page.inner_text("#alerts li.entry .detail")
    assert f"closest {ENROLLED} 0." in detail, detail
    screenshot(page, "alerts")
    page.click("#alerts li.entry .review")
    page.wait_for_selector("#alert-face")
    wait_for(lambda: image_loaded(page, "#alert-face"), 10, "the alert's face image")
    facts = page.inner_text("#alert-facts")
    assert ENROLLED in facts and "score 0." in facts and "First seen" in facts, facts
    screenshot(page, "alert")
    page.fill("#alert-name", "Serena Williams")
    page.click("#enrol-alert")
    page.wait_for_url(url + "/people")
    assert "Serena Williams is enrolled from the alert's face" in page.inner_text("#flashes")
    assert people(guarded_kiosk) == {ENROLLED: 2, "Serena Williams": 1}
    page.goto(url + "/")
    # the alert now says who the face was enrolled as, and that face is recognised
    page.wait_for_selector("#alerts .who:text-is('Enrolled as Serena Williams')",
                           timeout=10_000)
    page.wait_for_selector("#recent .who:text-is('Serena Williams')", timeout=20_000)


def test_people_page_shows_each_persons_photo(page: Any, guarded_kiosk: Kiosk) -> None:
    page.click("nav >> text=People")
    page.wait_for_url(guarded_kiosk.url + "/people")
    count = page.locator(".person").count()
    assert count == len(people(guarded_kiosk)) >= 1
    for index in range(count):
        selector = f".person:nth-child({index + 1}) img.face"
        wait_for(lambda s=selector: image_loaded(page, s), 10, f"the photo of {selector}")
    screenshot(page, "people")
