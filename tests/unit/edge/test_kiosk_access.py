"""The kiosk's login gate (checked before the password hash) and ended sessions."""

from __future__ import annotations

import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from edge.kiosk.access import LoginGate, LoginRefused, SessionEnds


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def gate(clock: Clock, max_failures: int = 5, global_max: int = 50, checks: int = 2,
         wait_s: float = 5.0) -> LoginGate:
    return LoginGate(max_failures, 300.0, global_max, checks, wait_s, clock)


def fail(g: LoginGate, client: str, trusted: bool = False) -> int:
    with g.attempt(client, trusted) as attempt:
        return attempt.failed()


def refusal(g: LoginGate, client: str, trusted: bool = False) -> LoginRefused:
    with pytest.raises(LoginRefused) as refused, g.attempt(client, trusted):
        pass
    return refused.value


def test_parallel_wrong_passwords_get_at_most_max_failures_checks() -> None:
    """40 attempts at once from one client: the gate reserves each admitted check
    before the hash runs, so no more than 5 are ever checked, and at most 2 at a time."""
    g = gate(Clock())
    running = 0
    most = 0
    lock = threading.Lock()
    start = threading.Barrier(40)

    def attempt(_: int) -> str:
        nonlocal running, most
        start.wait()
        try:
            with g.attempt("address:10.0.0.9") as admitted:
                with lock:
                    running += 1
                    most = max(most, running)
                time.sleep(0.05)  # a hash check's duration (argon2: 0.1-0.5 s)
                with lock:
                    running -= 1
                admitted.failed()
                return "checked"
        except LoginRefused as refused:
            return refused.reason

    with ThreadPoolExecutor(40) as pool:
        outcomes = list(pool.map(attempt, range(40)))
    assert outcomes.count("checked") == 5 and g.checks == 5
    assert set(outcomes) <= {"checked", "busy", "locked"}
    assert most <= 2
    assert refusal(g, "address:10.0.0.9").reason == "locked"


def test_lockout_is_per_client_and_slides() -> None:
    clock = Clock()
    g = gate(clock)
    assert [fail(g, "address:a") for _ in range(5)] == [4, 3, 2, 1, 0]
    locked = refusal(g, "address:a")
    assert locked.reason == "locked" and 299 <= locked.retry_after <= 300
    with g.attempt("address:b") as other:  # another client is not locked out
        other.succeeded()
    clock.now += 301
    with g.attempt("address:a") as again:
        again.succeeded()
    assert fail(g, "address:a") == 4  # a success forgets the client's failures


def test_many_addresses_lock_out_new_clients_but_not_known_browsers() -> None:
    """A guess spread over many addresses trips the global backstop; a browser that
    logged in here before (device cookie: trusted) keeps its own budget."""
    clock = Clock()
    g = gate(clock, global_max=10)
    for n in range(10):
        fail(g, f"address:10.0.0.{n}")
    assert refusal(g, "address:10.0.1.1").reason == "crowded"
    with g.attempt("device:staff-screen", trusted=True) as staff:
        staff.succeeded()
    clock.now += 301
    with g.attempt("address:10.0.1.1") as later:
        later.succeeded()


def test_check_slots_are_capped_and_waiting_is_bounded() -> None:
    g = gate(Clock(), checks=1, wait_s=0.2)
    inside = threading.Event()
    leave = threading.Event()

    def hold() -> None:
        with g.attempt("address:x") as admitted:
            inside.set()
            leave.wait(10)
            admitted.succeeded()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert inside.wait(10)
        started = time.monotonic()
        assert refusal(g, "address:y").reason == "busy"  # waited for the slot, in vain
        assert time.monotonic() - started >= 0.2
    finally:
        leave.set()
        holder.join()
    with g.attempt("address:y") as admitted:  # the slot is free again
        admitted.succeeded()
    assert g.checks == 2


def test_a_check_that_raises_frees_its_slot_and_records_nothing() -> None:
    g = gate(Clock(), checks=1)
    with pytest.raises(RuntimeError), g.attempt("address:x"):
        raise RuntimeError("the hash file cannot be read")
    assert fail(g, "address:x") == 4


def test_ended_sessions_are_refused_until_their_cookie_expires(tmp_path: Path) -> None:
    clock = Clock()
    ends = SessionEnds(tmp_path, clock)
    assert not ends.ended("sid-1") and not ends.ended(None)
    ends.end("sid-1", 900)
    assert ends.ended("sid-1") and not ends.ended("sid-2")
    assert stat.S_IMODE(ends.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(ends.path.parent.stat().st_mode) == 0o700
    reloaded = SessionEnds(tmp_path, clock)  # a restart does not revive the session
    assert reloaded.ended("sid-1")
    clock.now += 901
    assert not reloaded.ended("sid-1")  # its cookie has expired by now anyway
    reloaded.end("sid-3", 900)
    assert "sid-1" not in ends.path.read_text()  # expired entries are dropped


def test_a_damaged_ended_sessions_file_is_reported_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ends = SessionEnds(tmp_path, Clock())
    ends.end("sid-1", 900)
    ends.path.write_text("{not json")
    assert not SessionEnds(tmp_path, Clock()).ended("sid-1")
    assert "sessions ended before are forgotten" in caplog.text


def test_logout_holds_even_when_it_cannot_be_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ends = SessionEnds(tmp_path, Clock())
    ends.end("sid-1", 900)
    ends.path.unlink()
    ends.path.mkdir()  # the file cannot be replaced now (as on a full or read-only disk)
    ends.end("sid-2", 900)
    assert ends.ended("sid-2") and "not recorded on disk" in caplog.text
