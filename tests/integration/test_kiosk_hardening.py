"""Issue 15's kiosk attacks (6 and 7) against a real kiosk process over HTTP: parallel
wrong passwords, logout and the old cookie, a PNG decompression bomb, a bidi name; and
the same name and image rules at ``fedface-edge enroll``.

One kiosk process serves the module (starting one loads the models: seconds); each
test plays its own client addresses (127.0.0.x) so one test's lockout is not another's.
"""

from __future__ import annotations

import email.utils
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.rig.kiosk import ARGON2_MIB, KioskClient, KioskProcess, png_bomb
from edge.cli import app
from edge.gallery.store import Gallery
from edge.kiosk.app import EXPIRED_NOTICE_S
from edge.kiosk.settings import KioskSettings

DEFAULTS = KioskSettings()
MIB = 2**20


@pytest.fixture(scope="module")
def kiosk(tmp_path_factory: pytest.TempPathFactory, lfw_dir: Path) -> Iterator[KioskProcess]:
    with KioskProcess(tmp_path_factory.mktemp("kiosk"), lfw_dir) as running:
        yield running


def rows(kiosk: KioskProcess) -> dict[str, int]:
    with Gallery.open(kiosk.data_dir) as gallery:
        return gallery.count_rows()


def logged_in(kiosk: KioskProcess, source: str) -> KioskClient:
    client = KioskClient(kiosk.url, source)
    assert client.log_in().status == 302
    return client


def test_parallel_wrong_passwords_are_checked_at_most_five_times(kiosk: KioskProcess) -> None:
    # the staff's screen logged in from the attacked address before (a device cookie)
    screen = logged_in(kiosk, "127.0.0.3")
    device = {k: v for k, v in screen.cookies.items() if k == "fedface_kiosk_device"}
    assert device, "a login gives the browser a device cookie"
    attackers = [KioskClient(kiosk.url, "127.0.0.3") for _ in range(40)]
    tokens = [a.csrf() for a in attackers]
    checks_before = kiosk.password_checks()
    kiosk.reset_high_water()
    rss_before = kiosk.rss()
    start = threading.Barrier(len(attackers))

    def guess(index: int) -> int:
        start.wait(timeout=60)
        return attackers[index].log_in("not the password", tokens[index]).status

    with ThreadPoolExecutor(len(attackers)) as pool:
        statuses = list(pool.map(guess, range(len(attackers))))
    checks = kiosk.password_checks() - checks_before
    grown = kiosk.high_water() - rss_before
    assert statuses.count(401) == checks, statuses  # every checked guess was wrong
    assert 1 <= checks <= DEFAULTS.login_max_failures
    assert statuses.count(429) == len(attackers) - checks
    # at most login_concurrent_checks argon2 checks in memory at once, plus slack
    assert grown < (DEFAULTS.login_concurrent_checks * ARGON2_MIB + 64) * MIB, grown / MIB
    # the attacked address is locked out, even with the right password...
    locked = KioskClient(kiosk.url, "127.0.0.3").log_in()
    assert locked.status == 429 and "Too many failed log-in attempts" in locked.text
    assert int(locked.header("Retry-After") or 0) > 0
    # ...but not the staff: from another machine, or from the browser that logged in here
    assert KioskClient(kiosk.url, "127.0.0.4").log_in().status == 302
    staff = KioskClient(kiosk.url, "127.0.0.3", cookies=dict(device))
    assert staff.log_in().status == 302
    assert staff.get("/people").status == 200


def test_logout_ends_the_session_on_the_server(kiosk: KioskProcess) -> None:
    staff = KioskClient(kiosk.url, "127.0.0.5")
    login = staff.log_in()
    assert login.status == 302
    session = next(c for c in login.cookies_set() if c.startswith("fedface_kiosk="))
    expires = re.search(r"Expires=([^;]+)", session)
    assert expires, session
    date = email.utils.parsedate_to_datetime(login.header("Date") or "")
    lifetime = (email.utils.parsedate_to_datetime(expires.group(1)) - date).total_seconds()
    # not Flask's 31 days: the idle timeout, and 12 h in which a returning browser is
    # told its session expired (the server refuses it after the idle timeout)
    assert abs(lifetime - DEFAULTS.idle_timeout_s - EXPIRED_NOTICE_S) <= 5, lifetime
    assert staff.get("/people").status == 200
    assert staff.get("/api/status").status == 200
    copied = KioskClient(kiosk.url, "127.0.0.6", cookies=dict(staff.cookies))
    assert copied.get("/people").status == 200  # a copy works while the session lives
    token = staff.csrf("/people")
    assert staff.post("/logout", {"csrf_token": token}).status == 302
    after = copied.get("/people")
    assert after.status == 302 and after.header("Location") == "/login"
    assert copied.get("/api/status").status == 401
    assert "This session was logged out" in copied.get("/login").text


def test_png_bomb_is_refused_fast_with_little_memory(kiosk: KioskProcess) -> None:
    staff = logged_in(kiosk, "127.0.0.7")
    bomb = png_bomb(30000, 30000)
    assert len(bomb) < DEFAULTS.max_upload_bytes  # it passes the upload size limit
    token = staff.csrf("/enrol")
    before = rows(kiosk)
    kiosk.reset_high_water()
    rss_before = kiosk.rss()
    started = time.monotonic()
    refused = staff.post_files("/enrol/upload", {"name": "Bomb", "csrf_token": token},
                               [("bomb.png", bomb)])
    elapsed = time.monotonic() - started
    grown = kiosk.high_water() - rss_before
    assert refused.status == 400
    assert "bomb.png is 30000x30000 pixels (900 MP); photos of at most 40 MP are accepted." \
        in refused.text
    assert elapsed < 1.0, elapsed
    assert grown < 100 * MIB, grown / MIB
    assert rows(kiosk) == before


def test_bidi_name_is_refused_and_nothing_is_stored(kiosk: KioskProcess, lfw_dir: Path) -> None:
    staff = logged_in(kiosk, "127.0.0.8")
    photo = sorted((lfw_dir / "George_W_Bush").glob("*.jpg"))[0].read_bytes()
    before = rows(kiosk)
    for name in ("Ada\u202eecivreS", "Ada\u2066X\u2069", "Ada\x1b[2J"):
        refused = staff.post_files("/enrol/upload",
                                   {"name": name, "csrf_token": staff.csrf("/enrol")},
                                   [("ada.jpg", photo)])
        assert refused.status == 400
        assert re.search(r"The name contains a (text-direction )?control character "
                         r"\(U\+[0-9A-F]{4}, character 4\)", refused.text), refused.text
    assert rows(kiosk) == before
    kept = staff.post_files("/enrol/upload", {"name": "Ada", "csrf_token": staff.csrf("/enrol")},
                            [("ada.jpg", photo)])
    assert kept.status == 302 and rows(kiosk)["people"] == before["people"] + 1


def test_cli_enrol_refuses_bidi_names_and_bombs(tmp_path: Path, lfw_dir: Path) -> None:
    photo = sorted((lfw_dir / "George_W_Bush").glob("*.jpg"))[0]
    runner = CliRunner()
    data = str(tmp_path / "box")
    named = runner.invoke(app, ["--data-dir", data, "enroll", "Ada\u202eX", str(photo)])
    assert named.exit_code == 2, named.output
    assert "text-direction control character (U+202E" in named.stderr
    folder = tmp_path / "people"
    (folder / "Bob\u2067").mkdir(parents=True)
    (folder / "Carol").mkdir()
    for person in ("Bob\u2067", "Carol"):
        (folder / person / "1.jpg").write_bytes(photo.read_bytes())
    listed = runner.invoke(app, ["--data-dir", data, "enroll", "--from-dir", str(folder)])
    assert listed.exit_code == 2 and "folder names that cannot be a person's name" in \
        listed.stderr and "U+2067" in listed.stderr
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb(30000, 30000))
    started = time.monotonic()
    exploded = runner.invoke(app, ["--data-dir", data, "enroll", "Dan", str(bomb)])
    assert exploded.exit_code == 3 and "30000x30000 pixels" in exploded.stderr
    assert time.monotonic() - started < 30  # models load; the bomb is never decoded
    with Gallery.open(Path(data)) as gallery:
        assert gallery.count_rows()["people"] == 0
