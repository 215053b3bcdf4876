"""A real headless Chromium (Playwright) driving the kiosk page: log in, read the status,
take camera shots."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.kiosk import (
    A_FRAMES,
    CYCLE,
    KIOSK_PASSWORD,
    kiosk_frames,  # noqa: F401  (fixture)
    kiosk_pipeline,  # noqa: F401  (fixture)
    )

CHROMIUM = "/usr/bin/chromium"


CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


KIOSK_VIEW = {"width": 1280, "height": 800}


PHONE_VIEW = {"width": 390, "height": 844}


REPO_ROOT = Path(__file__).resolve().parents[2]


SHOTS = REPO_ROOT / "artifacts" / "screenshots"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: apt-get install -y chromium "
                    "(firmware_scripts/dev/install-test-deps.sh)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    with sync_api.sync_playwright() as playwright:
        # Debian's Chromium, never a downloaded browser build (`playwright install`)
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def log_in(page: Any, url: str) -> None:
    page.goto(url + "/")
    assert page.url.endswith("/login"), "an anonymous visit must land on the login form"
    page.fill("#password", KIOSK_PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(url + "/")


def status(page: Any) -> dict[str, Any]:
    result = page.evaluate("fetch('/api/status', {cache: 'no-store'}).then(r => r.json())")
    assert isinstance(result, dict)
    return result


def wait_for(condition: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def live_seq(page: Any) -> int:
    return int(page.get_attribute("#live", "data-seq") or 0)


def check_fits_phone(page: Any) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE_VIEW["width"], f"page scrolls sideways on a phone ({width} px)"
    small = page.evaluate(
        "[...document.querySelectorAll('button, a.button, nav a')]"
        ".filter(e => e.offsetParent !== null && e.getBoundingClientRect().height < 44)"
        ".map(e => e.textContent.trim())")
    assert small == [], f"touch targets under 44 px: {small}"


def take_camera_shots(page: Any, needed: int) -> list[str]:
    """Press 'Take shot' while the camera shows the person being enrolled."""
    feedback: list[str] = []
    shot_at: set[int] = set()  # photos shot: the kiosk refuses a copy of an earlier shot
    for _ in range(4 * needed):
        # shoot inside PERSON_A's run of frames, away from its edges, on a photo not shot
        wait_for(lambda: 1 <= (status(page)["frame"] or 0) % CYCLE <= A_FRAMES - 3
                 and (status(page)["frame"] or 0) % CYCLE not in shot_at,
                 10, "a frame of the person being enrolled")
        shot_at.add((status(page)["frame"] or 0) % CYCLE)
        page.click("#take-shot")
        page.wait_for_load_state()
        feedback.append(page.inner_text("#feedback li:first-child"))
        if page.is_enabled("#save"):
            return feedback
        time.sleep(0.3)
    raise AssertionError(f"could not take {needed} good shots: {feedback}")
