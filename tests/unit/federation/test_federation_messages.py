"""The typed control messages (federation.messages): the wire format is the one deployed
boxes and aggregators already speak, and parsing refuses what a box must not act on."""

from __future__ import annotations

import json
from typing import Any

import pytest

from federation.crypto.dp import DpConfig
from federation.errors import MALFORMED, FederationError
from federation.messages import (
    Ack,
    DeviceStatus,
    ModelPointer,
    RevocationNotice,
    RoundAnnounce,
    parse_ack_topic,
)
from federation.verdicts import Verdict

# Bodies exactly as the aggregator and the box built them as dicts before the messages
# were typed (aggregator/rounds/coordinator.py, publisher.py, box_status.py at issue 14).
ANNOUNCE = {"round": 3, "base_model": "round-2", "state": "open", "opened_at": 1000.5,
            "deadline": 1300.5, "quorum": 2, "count_scale": 0.001, "part_key": "fc@abc",
            "chunk_size": 262144, "devices": ["box-a", "box-b"], "min_new_samples": 0,
            "dp": {"clip_norm": 1.0, "noise_multiplier": 1.1, "delta": 1e-05,
                   "mode": "local"}, "pinned": False}
ACK = {"device": "box-a", "round": 3, "msg": "ab" * 16, "accepted": False,
       "reason": "stale_version", "detail": "update is based on base", "current_round": 3,
       "contributions": 1}
POINTER = {"round": 3, "model": "round-3", "base_model": "round-2", "msg": "cd" * 16,
           "blob_sha256": "ef" * 32, "blob_size": 4096, "chunks": 2, "chunk_size": 2048,
           "contributors": 2, "result_topic": "fedface/f/result/3/+"}


def test_announce_wire_format_round_trips() -> None:
    ann = RoundAnnounce.from_json(json.dumps(ANNOUNCE))
    assert ann.open and ann.devices == ("box-a", "box-b") and ann.dp is not None
    assert ann.to_dict() == ANNOUNCE
    closed = {**ANNOUNCE, "state": "closed", "next_round_at": 5000}
    again = RoundAnnounce.from_dict(closed)
    assert not again.open and again.to_dict() == closed
    assert isinstance(again.to_dict()["next_round_at"], int), "numbers are kept as sent"


def test_announce_of_an_older_aggregator_parses() -> None:
    # before the schedule and the pins: no min_new_samples, pinned, opened_at, dp
    old = {k: v for k, v in ANNOUNCE.items()
           if k not in ("min_new_samples", "pinned", "opened_at", "dp")}
    ann = RoundAnnounce.from_dict({**old, "future_field": [1, 2]})  # unknown keys ignored
    assert ann.min_new_samples == 0 and ann.pinned is None and ann.dp is None
    assert ann.to_dict() == {**old, "min_new_samples": 0}


@pytest.mark.parametrize("change", [
    {"round": "3"}, {"round": True}, {"round": None}, {"deadline": "soon"},
    {"count_scale": 0}, {"quorum": 2.5}, {"devices": "box-a"}, {"devices": ["a", 1]},
    {"min_new_samples": -1}, {"dp": {"clip_norm": 1.0}}, {"state": 1}, {"pinned": "yes"},
])
def test_announce_with_a_bad_field_is_malformed(change: dict[str, Any]) -> None:
    body = {k: v for k, v in {**ANNOUNCE, **change}.items() if v is not None}
    with pytest.raises(FederationError) as exc:
        RoundAnnounce.from_dict(body)
    assert exc.value.reason == MALFORMED


@pytest.mark.parametrize("payload", [b"\xff", b"not json", b"[1, 2]", b""])
def test_payload_that_is_not_an_object_is_malformed(payload: bytes) -> None:
    for parse in (RoundAnnounce.from_json, Ack.from_json, ModelPointer.from_json,
                  DeviceStatus.from_json, parse_ack_topic):
        with pytest.raises(FederationError) as exc:
            parse(payload)
        assert exc.value.reason == MALFORMED


def test_ack_wire_format() -> None:
    ack = Ack.from_dict(ACK)
    assert ack.to_dict() == ACK
    assert ack.to_json() == json.dumps(ACK, sort_keys=True).encode()
    # an ack about no update (a rate-limit report): round and msg null
    report = Ack(False, "rate_limited", "slow down", "box-a")
    assert report.to_dict()["round"] is None and "msg" in report.to_dict()
    with pytest.raises(FederationError):
        Ack.from_dict({**ACK, "accepted": "yes"})
    with pytest.raises(FederationError):
        Ack.from_dict({**ACK, "round": "3"})


def test_revocation_notice_wire_format_and_ack_topic() -> None:
    notice = RevocationNotice("box-a", revoked_at=1234.5)
    body = notice.to_dict()
    assert body == {"device": "box-a", "round": None, "msg": None, "accepted": False,
                    "reason": "revoked", "revoked": True, "revoked_at": 1234.5,
                    "detail": "device 'box-a' was revoked by the federation operator; "
                              "re-provision the box under a new device id"}
    # an old box reads it as an ack about no update, so it does not act on it
    assert Ack.from_dict(body).msg is None
    got = parse_ack_topic(notice.to_json())
    assert isinstance(got, RevocationNotice) and got.device == "box-a"
    assert isinstance(parse_ack_topic(json.dumps(ACK)), Ack)
    shouting = parse_ack_topic(json.dumps({**body, "detail": "bad\x1b[2Jbox" * 50}))
    assert isinstance(shouting, RevocationNotice)
    assert shouting.detail.isprintable() and len(shouting.detail) <= 300


def test_pointer_wire_format() -> None:
    assert ModelPointer.from_dict(POINTER).to_dict() == POINTER
    again = {**POINTER, "republished": True, "for_round": 5}
    assert ModelPointer.from_dict(again).to_dict() == again
    with pytest.raises(FederationError):
        ModelPointer.from_dict({k: v for k, v in POINTER.items() if k != "blob_sha256"})


def test_status_wire_format() -> None:
    verdict = Verdict(3, "round-3", "applied", "canary ok", 10.0, 0.8, 0.9, 12)
    sink = {"serving": "round-3", "last_swap": None}
    status = DeviceStatus("online", "box-a", "round-3", 99.0, {"reason": "no_new_samples"},
                          (verdict,), {"epsilon": 1.0}, sink)
    body = status.to_dict()
    assert body == {"serving": "round-3", "last_swap": None,
                    "not_joining": {"reason": "no_new_samples"},
                    "verdicts": [{"round": 3, "model": "round-3", "outcome": "applied",
                                  "reason": "canary ok", "at": 10.0, "before": 0.8,
                                  "after": 0.9, "probes": 12}],
                    "dp": {"epsilon": 1.0}, "state": "online", "device": "box-a",
                    "model": "round-3", "ts": 99.0}
    assert DeviceStatus.from_json(status.to_json()) == status
    bare = DeviceStatus("offline", "box-a", "base", 1.0).to_dict()
    assert bare == {"state": "offline", "device": "box-a", "model": "base", "ts": 1.0}
    with pytest.raises(FederationError):
        DeviceStatus.from_dict({**bare, "state": None})


def test_dp_in_announce_is_the_settings_object() -> None:
    dp = DpConfig(1.0, 1.1, 1e-5, "local")
    ann = RoundAnnounce(1, "base", "open", 10.0, 2, 0.001, 1024, dp=dp)
    assert RoundAnnounce.from_json(ann.to_json()).dp == dp


def test_a_long_verdict_reason_ends_at_a_word() -> None:
    """helper-57: status and model status cut a box's reason mid-word ('a newer one th',
    'another key epoch (an'). A long one now ends at a word, with an ellipsis."""
    from federation.verdicts import printable

    reason = ("built on round-1, which this box does not serve: wrong_key: encrypted under "
              "federation key " + "3" * 32 + ", this context is key " + "4" * 32 + ": "
              "another key epoch (an older result after a rotation, or a newer one this box "
              "has no key for yet)")
    shown = printable(reason)
    assert len(shown) <= 200 and shown.endswith("another key epoch…"), shown
    assert printable("short\x1b[2J reason") == "short[2J reason"  # no terminal control
    assert printable("x" * 300) == "x" * 199 + "…"  # no word to end at: cut, said
