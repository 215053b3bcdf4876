"""A box that vanished (kill -9, power loss): its last will, built at its connect, says
"offline" with the model and time of then. ``serve`` keeps each box's last online
status and when it heard a will older than it (aggregator.state.presence, recorded off
the round's path by aggregator.intake.presence); the operator's status shows that.
Real signed statuses on an in-memory bus, a real state db."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aggregator.cli import status as status_cli
from aggregator.intake.presence import PresenceRecorder
from aggregator.intake.verdicts import StatusIntake, VerdictReport
from aggregator.state.presence import (
    Heard,
    PresenceRecord,
    last_known,
    load_presence,
    observe,
    save_presence,
    shown,
    status_entry,
)
from aggregator.state.store import Store
from federation import topics
from federation.chunking import split_blob
from federation.envelope import encode
from federation.errors import FederationError
from federation.messages import DeviceStatus
from federation.transport.base import InMemoryBus, InMemoryTransport, RetainAware, Will
from federation.verdicts import Verdict

FED = "fedp"
BOX = "box-a"
NOW = 5_000.0  # the aggregator's clock in these tests


def _entry(state: str, model: str, ts: float) -> dict:
    return {"state": state, "model": model, "ts": ts, "last_swap": None, "verdicts": []}


def _heard(state: str, model: str, ts: float, *, retained: bool = False,
           at: float = NOW) -> Heard:
    return Heard(BOX, _entry(state, model, ts), retained, at)


ONLINE_R3 = PresenceRecord(BOX, "round-3", 200.0, 4_000.0)


# --- the rules (pure) -----------------------------------------------------------------------
def test_an_online_status_newer_than_the_record_replaces_it() -> None:
    first = observe(None, _heard("online", "base", 100.0, retained=True, at=1.0))
    assert first == PresenceRecord(BOX, "base", 100.0, 1.0)
    assert observe(first, _heard("online", "round-3", 200.0)) == \
        PresenceRecord(BOX, "round-3", 200.0, NOW)
    # the same status again (a reconnect of either side), or an older one: nothing
    assert observe(ONLINE_R3, _heard("online", "round-3", 200.0)) is None
    assert observe(ONLINE_R3, _heard("online", "round-2", 150.0, retained=True)) is None


def test_a_live_will_older_than_the_record_marks_the_box_offline_since_now() -> None:
    after = observe(ONLINE_R3, _heard("offline", "base", 100.0))
    assert after == PresenceRecord(BOX, "round-3", 200.0, 4_000.0, offline_since=NOW,
                                   will_at=100.0)
    # the same will heard again later (serve reconnected): the first time stays
    assert observe(after, _heard("offline", "base", 100.0, at=NOW + 60)) is None


def test_a_retained_will_says_nothing_about_when_the_box_went() -> None:
    assert observe(ONLINE_R3, _heard("offline", "base", 100.0, retained=True)) is None


def test_a_clean_stop_is_kept_as_such_and_other_states_change_nothing() -> None:
    # the box's own offline status is newer than its last online one: shown as it is
    # while the broker answers, and kept as its last known state for when it does not
    stopped = observe(ONLINE_R3, _heard("offline", "round-3", 300.0))
    assert stopped == PresenceRecord(BOX, "round-3", 200.0, 4_000.0, stopped_at=300.0)
    assert observe(stopped, _heard("offline", "round-3", 300.0, retained=True)) is None
    assert observe(stopped, _heard("online", "round-3", 400.0, at=NOW)) == \
        PresenceRecord(BOX, "round-3", 400.0, NOW)  # started again
    assert observe(ONLINE_R3, _heard("revoked", "round-3", 300.0)) is None
    assert observe(None, _heard("offline", "base", 100.0)) is None  # nothing to keep


def test_the_last_known_state_of_a_box_for_a_broker_that_cannot_be_reached() -> None:
    """`status` with the broker down showed every box as "unknown": it shows what serve
    last heard, and since when (the box's own times, but the will's: serve's)."""
    assert last_known(ONLINE_R3) == {"state": "online", "since": 200.0, "how": "online_status",
                                     "model": "round-3", "last_swap": None, "verdicts": []}
    gone = observe(ONLINE_R3, _heard("offline", "base", 100.0))
    assert gone is not None
    assert {k: last_known(gone)[k] for k in ("state", "since", "how", "model")} == \
        {"state": "offline", "since": NOW, "how": "last_will", "model": "round-3"}
    stopped = replace(ONLINE_R3, stopped_at=300.0)
    assert {k: last_known(stopped)[k] for k in ("state", "since", "how", "model")} == \
        {"state": "offline", "since": 300.0, "how": "stopped", "model": "round-3"}


def test_a_box_back_online_is_online_even_if_its_clock_went_back() -> None:
    gone = observe(ONLINE_R3, _heard("offline", "base", 100.0))
    back = observe(gone, _heard("online", "round-3", 150.0, at=NOW + 10))
    assert back == PresenceRecord(BOX, "round-3", 150.0, NOW + 10)
    # but a retained copy of an old online status is not the box coming back
    assert observe(gone, _heard("online", "round-3", 150.0, retained=True)) is None


def test_the_operator_sees_the_last_reported_model_for_a_stale_will() -> None:
    gone = PresenceRecord(BOX, "round-3", 200.0, 4_000.0,
                          last_swap={"event": "swapped", "version": "round-3"},
                          verdicts=[{"round": 3, "outcome": "applied"}],
                          offline_since=NOW, will_at=100.0)
    will = _entry("offline", "base", 100.0)
    seen = shown(will, gone)
    assert seen is not None
    assert (seen["state"], seen["model"], seen["ts"]) == ("offline", "round-3", NOW)
    assert seen["last_reported"] is True and seen["offline_since"] == NOW
    assert seen["last_online"] == 200.0 and seen["will_at"] == 100.0
    assert seen["last_swap"]["version"] == "round-3" and seen["verdicts"][0]["round"] == 3
    # serve was not listening when the will came: the model, and "since" unknown
    unknown = shown(will, ONLINE_R3)
    assert unknown is not None and unknown["model"] == "round-3" and unknown["ts"] is None


def test_the_operator_sees_other_statuses_as_they_are() -> None:
    clean_stop = _entry("offline", "round-3", 300.0)
    online = _entry("online", "round-4", 400.0)
    invalid = {"state": "invalid", "model": None, "ts": None, "error": "bad_signature"}
    for entry in (clean_stop, online, invalid, None):
        assert shown(entry, ONLINE_R3) is entry
    assert shown(_entry("offline", "base", 100.0), None)["model"] == "base"  # type: ignore[index]


def test_status_entry_keeps_text_printable_and_refuses_a_time_that_is_no_time() -> None:
    status = DeviceStatus("online", BOX, "round-1\x1b[2J", 10.0,
                          sink={"last_swap": {"event": "swapped", "reason": "ok\x07"}})
    entry = status_entry(status, 9.0)
    assert entry["model"] == "round-1[2J" and entry["last_swap"]["reason"] == "ok"
    assert status_entry(DeviceStatus("online", BOX, "m"), 9.0)["ts"] == 9.0  # an old box
    for bad in (float("nan"), float("inf")):
        with pytest.raises(FederationError):
            status_entry(DeviceStatus("online", BOX, "m", bad), 9.0)


def test_records_are_kept_in_the_state_db_and_a_damaged_row_is_skipped(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = Store(tmp_path)
    gone = PresenceRecord(BOX, "round-3", 200.0, 4_000.0, {"event": "swapped"},
                          [{"round": 3}], NOW, 100.0)
    save_presence(store.db, gone)
    save_presence(store.db, PresenceRecord("box-b", "base", 1.0, 2.0, stopped_at=3.0))
    store.db.execute("INSERT INTO device_presence VALUES ('box-c', 'm', 1, 2, '{not json', "
                     "NULL, NULL)")
    with caplog.at_level(logging.WARNING):
        assert load_presence(store.db) == {
            BOX: gone, "box-b": PresenceRecord("box-b", "base", 1.0, 2.0, stopped_at=3.0)}
    assert "box-c" in caplog.text
    store.close()


# --- the transport tells a retained status from a live one ---------------------------------
def test_the_in_memory_bus_tells_retained_messages_from_live_ones() -> None:
    bus = InMemoryBus()
    box = InMemoryTransport(bus, BOX, will=Will("s/box", b"will", retain=True))
    box.publish("s/box", b"first", retain=True)
    flagged: list[tuple[bytes, bool]] = []
    plain: list[bytes] = []
    watcher = InMemoryTransport(bus, "watcher")
    watcher.subscribe("s/+", RetainAware(lambda _t, p, retained: flagged.append((p, retained))))
    other = InMemoryTransport(bus, "other")
    other.subscribe("s/+", lambda _t, p: plain.append(p))  # plain handlers as before
    box.publish("s/box", b"second", retain=True)
    box.drop()  # the broker publishes the will: live
    assert flagged == [(b"first", True), (b"second", False), (b"will", False)]
    assert plain == [b"first", b"second", b"will"]
    later = InMemoryTransport(bus, "later")  # subscribing after: the will, from the store
    later.subscribe("s/+", RetainAware(lambda _t, p, retained: flagged.append((p, retained))))
    assert flagged[-1] == (b"will", True)
    seen: list[bool] = []
    RetainAware(lambda _t, _p, retained: seen.append(retained))("s/box", b"x")
    assert seen == [True]  # called as a plain handler: never claimed live


# --- the intake and its recorder, on a bus ---------------------------------------------------
@dataclass
class Setup:
    bus: InMemoryBus
    store: Store
    key: Ed25519PrivateKey
    intake: StatusIntake
    recorder: PresenceRecorder
    reports: list[VerdictReport]

    def signed(self, state: str, model: str, ts: float, *, key: Ed25519PrivateKey | None = None,
               sender: str = BOX, verdicts: tuple[Verdict, ...] = ()) -> bytes:
        body = DeviceStatus(state, BOX, model, ts, verdicts=verdicts).to_json()
        (env,) = split_blob(body, key or self.key, kind="status", fed=FED, sender=sender,
                            round=0, model=model, chunk_size=len(body))
        return encode(env)

    def record(self) -> PresenceRecord | None:
        assert self.recorder.wait_settled(10)
        return load_presence(self.store.db).get(BOX)

    def listen(self, client_id: str = "aggregator") -> InMemoryTransport:
        agg = InMemoryTransport(self.bus, client_id)
        agg.subscribe(topics.status_filter(FED), self.intake.on_status)
        return agg


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    store = Store(tmp_path)
    key = Ed25519PrivateKey.generate()
    reports: list[VerdictReport] = []
    recorder = PresenceRecorder(tmp_path, clock=lambda: NOW, idle_seconds=0.2)
    intake = StatusIntake(FED, lambda: {BOX: key.public_key()}, reports.append, recorder)
    yield Setup(InMemoryBus(), store, key, intake, recorder, reports)
    intake.close()
    store.close()


def test_a_box_vanishing_is_recorded_with_its_last_model(setup: Setup) -> None:
    setup.listen()
    topic = topics.status(FED, BOX)
    box = InMemoryTransport(setup.bus, BOX, will=Will(topic, setup.signed("offline", "base",
                                                                          100.0)))
    box.publish(topic, setup.signed("online", "base", 101.0), retain=True)
    applied = Verdict(1, "round-1", "applied", "canary ok", 150.0)
    box.publish(topic, setup.signed("online", "round-1", 150.0, verdicts=(applied,)),
                retain=True)
    assert setup.record() == PresenceRecord(BOX, "round-1", 150.0, NOW,
                                            verdicts=[status_entry_verdict(applied)])
    box.drop()  # kill -9: the broker publishes the will built at connect
    gone = setup.record()
    assert gone is not None and gone.offline_since == NOW and gone.model == "round-1"
    assert [r.device for r in setup.reports] == [BOX]  # the verdicts went on as before
    # serve restarted after: the same will, now retained, changes nothing
    setup.listen("aggregator-2")
    assert setup.record() == gone


def status_entry_verdict(v: Verdict) -> dict:
    return status_entry(DeviceStatus("online", BOX, "m", 1.0, verdicts=(v,)), 1.0)["verdicts"][0]


def test_a_clean_stop_is_not_taken_for_a_vanished_box(setup: Setup) -> None:
    setup.listen()
    topic = topics.status(FED, BOX)
    will = setup.signed("offline", "base", 100.0)
    box = InMemoryTransport(setup.bus, BOX, will=Will(topic, will))
    box.publish(topic, setup.signed("online", "round-1", 150.0), retain=True)
    box.publish(topic, setup.signed("offline", "round-1", 160.0), retain=True)  # stop()
    box.close()
    record = setup.record()
    assert record is not None and record.offline_since is None
    assert record.stopped_at == 160.0  # its last known state, for a broker out of reach
    retained = status_entry(DeviceStatus.from_json(
        DeviceStatus("offline", BOX, "round-1", 160.0).to_json()), 160.0)
    assert shown(retained, record) is retained  # displayed as before


def test_bad_statuses_are_logged_and_dropped_and_the_next_good_one_counts(
        setup: Setup, caplog: pytest.LogCaptureFixture) -> None:
    agg = setup.listen()
    topic = topics.status(FED, BOX)
    box = InMemoryTransport(setup.bus, BOX)
    with caplog.at_level(logging.WARNING):
        box.publish(topic, b"not an envelope")
        box.publish(topic, setup.signed("online", "evil", 150.0,
                                        key=Ed25519PrivateKey.generate()))
        box.publish(topic, setup.signed("online", "evil", 150.0, sender="box-b"))
        box.publish(topic, setup.signed("online", "evil", float("nan")))
        box.publish(topics.status(FED, "box-unknown"), setup.signed("online", "x", 150.0))
    assert setup.record() is None
    assert caplog.text.count(f"status on {topic} dropped") == 1  # one line, then quiet
    box.publish(topic, setup.signed("online", "round-1", 150.0))
    assert setup.record() == PresenceRecord(BOX, "round-1", 150.0, NOW)
    assert agg.connected


def test_a_database_failure_is_logged_and_the_recorder_goes_on(
        setup: Setup, caplog: pytest.LogCaptureFixture) -> None:
    setup.store.db.execute("ALTER TABLE device_presence RENAME TO presence_away")
    with caplog.at_level(logging.ERROR):
        setup.recorder.observe(BOX, _entry("online", "round-1", 150.0), False)
        assert setup.recorder.wait_settled(10)
    assert "device presence of box-a not recorded" in caplog.text
    setup.store.db.execute("ALTER TABLE presence_away RENAME TO device_presence")
    setup.recorder.observe(BOX, _entry("online", "round-2", 250.0), False)
    assert setup.record() == PresenceRecord(BOX, "round-2", 250.0, NOW)


def test_the_recorder_never_blocks_the_delivery_thread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Store(tmp_path).close()
    stuck, entered = threading.Event(), threading.Event()

    def slow_record(*_args: object) -> None:
        entered.set()
        stuck.wait(10)

    monkeypatch.setattr(PresenceRecorder, "_record", staticmethod(slow_record))
    recorder = PresenceRecorder(tmp_path, max_pending=1)
    recorder.observe(BOX, _entry("online", "a", 1.0), False)
    assert entered.wait(10)  # the thread holds the first one
    start = time.monotonic()
    recorder.observe(BOX, _entry("online", "b", 2.0), False)  # queued
    recorder.observe(BOX, _entry("online", "c", 3.0), False)  # queue full: dropped
    assert time.monotonic() - start < 0.5 and recorder.dropped == 1
    stuck.set()
    assert recorder.wait_settled(10)
    recorder.close()
    recorder.observe(BOX, _entry("online", "d", 4.0), False)  # after close: ignored
    assert recorder.wait_settled(1) and recorder._thread is None


def test_the_recorder_thread_ends_when_idle_and_starts_again(setup: Setup) -> None:
    setup.recorder.observe(BOX, _entry("online", "round-1", 150.0), False)
    assert setup.record() is not None
    deadline = time.monotonic() + 10
    while setup.recorder._thread is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert setup.recorder._thread is None  # idle: no thread, no connection
    setup.recorder.observe(BOX, _entry("offline", "base", 100.0), False)
    gone = setup.record()
    assert gone is not None and gone.offline_since == NOW and gone.model == "round-1"


def test_the_operator_is_told_the_model_is_the_last_reported_one() -> None:
    line = status_cli._gone({"device_id": BOX, "model": "round-3", "offline_since": NOW,
                               "last_online": 200.0})
    assert line.startswith("offline since ") and "serve heard its last will" in line
    assert "round-3 is the last model it reported" in line
    assert "without a clean stop" in line
    unknown = status_cli._gone({"device_id": BOX, "model": "round-3", "offline_since": None,
                                  "last_online": 200.0})
    assert "since when is unknown" in unknown


def test_a_revoked_device_shows_one_line_not_its_old_verdicts(
        capsys: pytest.CaptureFixture[str]) -> None:
    """The operator's status kept a revoked box's last verdicts and 'went away without a
    clean stop' under the devices, as if it still took part: its registry line says it."""
    verdict = {"round": 4, "model": "round-4", "outcome": "applied", "reason": "canary ok",
               "at": NOW}
    device = {"state": "offline", "model": "round-3", "since": NOW, "last_swap": None,
              "verdicts": [verdict], "last_reported": True, "offline_since": NOW,
              "last_online": NOW - 60, "dp": None}
    info = {"fed": "acme", "key_id": "k", "serve": {"running": True, "pid": "7"},
            "open_round": None, "next_round_at": None,
            "pinned": None, "next_base": "round-4", "recent_results": [], "poisoned": [],
            "suspects": {}, "key_rotation_due": [], "counters": {},
            "device_status": [device | {"device_id": "box-gone", "registered": "revoked"},
                              device | {"device_id": "box-here", "registered": "active"}]}
    status_cli._print_status(info)
    out = capsys.readouterr().out
    assert sum("box-gone" in line for line in out.splitlines()) == 1, out
    assert "  box-here round 4" in out and "box-here offline since" in out, out


def test_a_box_s_dp_budget_is_kept_from_its_status_and_parsed_strictly() -> None:
    """The operator's `status` shows each box's privacy budget (from the box's own
    ledger, in its signed status); it was in the status but no command showed it."""
    from aggregator.state.presence import dp_fields

    good = {"epsilon_total": 8.0, "delta": 1e-5, "rounds": 2, "accountant": "rdp"}
    assert dp_fields(good) == {"epsilon_total": 8.0, "delta": 1e-5, "rounds": 2}
    for bad in (None, "8", {**good, "epsilon_total": float("nan")}, {**good, "rounds": True},
                {**good, "delta": "x"}, {"rounds": 2}):
        assert dp_fields(bad) is None
    assert status_cli._dp(dp_fields(good) or {}) == (
        "differential privacy: epsilon 8.00 spent over 2 round(s) at delta 1e-05")


def test_a_will_is_said_only_when_serves_own_link_stayed_up(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A broker shutting down publishes every box's will, then drops serve's link: those
    wills are taken back (one line); a box vanishing while the link stays up is said."""
    store = Store(tmp_path)
    link = [True, 1]  # serve's link to the broker: connected, connects so far
    recorder = PresenceRecorder(tmp_path, clock=lambda: NOW, idle_seconds=0.2,
                                link=lambda: (bool(link[0]), int(link[1])),
                                will_hold_seconds=0.3)

    def record() -> PresenceRecord | None:
        assert recorder.wait_settled(10)
        return load_presence(store.db).get(BOX)

    def logged(text: str) -> bool:
        deadline = time.monotonic() + 10
        while text not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        return text in caplog.text

    with caplog.at_level(logging.INFO):
        recorder.observe(BOX, _entry("online", "round-1", 150.0), False)
        recorder.observe(BOX, _entry("offline", "base", 100.0), False)  # its will, live
        gone = record()
        assert gone is not None and gone.offline_since == NOW  # status shows it at once
        link[1] = 2  # the broker went: serve's link dropped and came back
        assert logged("the broker went away: the last will(s) of box-a")
        back = record()
        assert back is not None and back.offline_since is None and back.model == "round-1"
        assert "went offline without a clean stop" not in caplog.text
        # the box really vanishes, serve's link up all along: said after the hold
        recorder.observe(BOX, _entry("online", "round-2", 160.0), False)
        recorder.observe(BOX, _entry("offline", "base", 100.0), False)
        assert logged("box-a went offline without a clean stop")
        gone = record()
        assert gone is not None and gone.offline_since == NOW and gone.model == "round-2"
        # a will that reaches serve after its own reconnect (queued in its session while
        # the broker restarted), its box back on its own status within the hold: not said
        caplog.clear()
        recorder.observe(BOX, _entry("online", "round-3", 170.0), False)
        recorder.observe(BOX, _entry("offline", "base", 100.0), False)
        recorder.observe(BOX, _entry("online", "round-3", 171.0), False)  # reconnected
        assert logged("box-a came back within")
        assert "went offline without a clean stop" not in caplog.text
        back = record()
        assert back is not None and back.offline_since is None and back.model == "round-3"
    recorder.close()
    store.close()


def test_a_broker_restart_is_said_when_serves_link_drops_and_its_redelivery_ignored(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The wills a broker publishes as it shuts down were taken back only after the whole
    hold (45 s), the box shown offline meanwhile; and serve's session gets them again
    after its reconnect (QoS 1 redelivery), which must not mark the box offline again."""
    store = Store(tmp_path)
    link = [True, 1]
    recorder = PresenceRecorder(tmp_path, clock=lambda: NOW, idle_seconds=5.0,
                                link=lambda: (bool(link[0]), int(link[1])),
                                will_hold_seconds=600.0)

    def record() -> PresenceRecord | None:
        assert recorder.wait_settled(10)
        return load_presence(store.db).get(BOX)

    with caplog.at_level(logging.INFO):
        recorder.observe(BOX, _entry("online", "round-1", 150.0), False)
        recorder.observe(BOX, _entry("offline", "base", 100.0), False)  # the shutdown's will
        assert (gone := record()) is not None and gone.offline_since == NOW
        link[0] = False  # serve's link dropped
        deadline = time.monotonic() + 5
        while "the broker went away" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "the broker went away: the last will(s) of box-a" in caplog.text
        assert (back := record()) is not None and back.offline_since is None
        link[:] = [True, 2]
        recorder.observe(BOX, _entry("offline", "base", 100.0), False)  # redelivered
        assert (still := record()) is not None and still.offline_since is None, still
        # the box back on its status, then vanishing for real: the same will is news
        recorder.observe(BOX, _entry("online", "round-1", 160.0), False)
        recorder.observe(BOX, _entry("offline", "base", 100.0), False)
        assert (gone := record()) is not None and gone.offline_since == NOW
    recorder.close()
    store.close()


def test_status_says_when_an_open_round_s_deadline_is_long_past() -> None:
    """With serve stopped, status printed `deadline in 0s` for ever."""
    assert status_cli._deadline(time.time() + 90).startswith("deadline in ")
    assert "serve running" not in status_cli._deadline(time.time() - 60)
    late = status_cli._deadline(time.time() - 600)
    assert late.startswith("deadline 10m ago") and "is fedface-aggregator serve running?" in late


def test_the_latest_round_a_status_speaks_of_is_passed_on_judged_or_not(
        setup: Setup) -> None:
    """How far the federation got, for a state restored from an older copy
    (aggregator.rounds.restored): a box's "submitted" verdict names a round the state may
    never have run, and it was filtered out with every verdict that judges no result."""
    setup.listen()
    topic = topics.status(FED, BOX)
    box = InMemoryTransport(setup.bus, BOX)
    applied = Verdict(5, "round-5", "applied", "canary ok", 150.0)
    sent = Verdict(6, None, "submitted", "update of 16 samples sent", 160.0)
    box.publish(topic, setup.signed("online", "round-5", 160.0, verdicts=(sent, applied)),
                retain=True)
    box.publish(topic, setup.signed("online", "round-5", 161.0, verdicts=(sent, applied)),
                retain=True)  # a reconnect: nothing new
    later = Verdict(7, None, "submitted", "update of 16 samples sent", 170.0)
    box.publish(topic, setup.signed("online", "round-5", 170.0,
                                    verdicts=(later, sent, applied)), retain=True)
    assert [(r.latest_round, [v.round for v in r.verdicts]) for r in setup.reports] == [
        (6, [5]), (7, [5])]
