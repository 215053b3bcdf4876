"""The control messages of the federation: what travels as the JSON body of a signed
envelope (docs/protocol.md), typed, built and parsed here only.

- ``RoundAnnounce`` (kind ``announce``, retained): the aggregator's current round;
- ``Ack`` (kind ``ack``, on ``ack/<device>``): an update accepted or rejected;
- ``RevocationNotice`` (kind ``ack``, same topic): "this device was revoked";
- ``ModelPointer`` (kind ``result``, retained ``model/latest``): the latest result;
- ``DeviceStatus`` (kind ``status``, retained, the box's last will too): a box's state.

A leaf of the contract, like Flower's FitIns/FitRes: it imports nothing beyond federation's
own leaf modules, so both sides, fuzzers and old-box tests use it without a transport.

The wire format is fixed: old boxes and new aggregators (and the reverse) interoperate.
``to_dict`` emits exactly the keys each message always carried; a key that was only
sometimes present (``dp``, ``pinned``, ``next_round_at``, ``republished``...) is emitted
only when set. Parsing is strict about the fields it reads (missing where required, or
of the wrong type: ``FederationError`` with reason ``malformed``) and ignores keys it
does not know, so an aggregator can add a field without breaking deployed boxes.
Numbers are kept as sent (an int stays an int): a stored announce re-announced is the same.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from federation.crypto.bounds import Bounds, ResultPolicy
from federation.crypto.dp import DpConfig
from federation.errors import MALFORMED, FederationError
from federation.verdicts import Verdict, from_status, printable, reported

REVOKED_REASON = "revoked"
_RESULT_VERSION = re.compile(r"round-(\d{1,9})")

OPEN, CLOSED = "open", "closed"

_M = TypeVar("_M", bound="_Message")
_NUMBER = (int, float)


def result_version(round_no: int) -> str:
    """The model version of a round's result, as announces and result pointers name it."""
    return f"round-{round_no}"


def result_round(version: str) -> int | None:
    """The round a result's version names; None for the base model and local versions."""
    match = _RESULT_VERSION.fullmatch(version)
    return int(match.group(1)) if match else None


def _object(data: bytes | str, kind: str) -> dict[str, Any]:
    try:
        body = json.loads(data.decode("utf-8") if isinstance(data, bytes) else data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise FederationError(MALFORMED, f"{kind} payload is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise FederationError(MALFORMED, f"{kind} payload is not a JSON object")
    return body


def _is(value: Any, typ: type | tuple[type, ...]) -> bool:
    # JSON true is a Python int: a bool passes only where a bool is asked for
    return isinstance(value, typ) and (not isinstance(value, bool) or typ is bool)


def _req(body: Mapping[str, Any], name: str, typ: type | tuple[type, ...], kind: str) -> Any:
    value = body.get(name)
    if not _is(value, typ):
        raise FederationError(MALFORMED, f"{kind} field {name!r} missing or of the wrong type")
    return value


def _opt(body: Mapping[str, Any], name: str, typ: type | tuple[type, ...], kind: str,
         default: Any = None) -> Any:
    """An optional field: absent or null gives ``default``; present, it must have its type."""
    value = body.get(name)
    if value is None:
        return default
    if not _is(value, typ):
        raise FederationError(MALFORMED, f"{kind} field {name!r} is of the wrong type")
    return value


class _Message:
    """``to_json``/``from_json`` over each message's ``to_dict``/``from_dict``."""

    KIND = ""

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_dict(cls: type[_M], body: Mapping[str, Any]) -> _M:
        raise NotImplementedError

    def to_json(self) -> bytes:
        # sorted keys: the same message is the same bytes (a republish after a crash)
        return json.dumps(self.to_dict(), sort_keys=True).encode()

    @classmethod
    def from_json(cls: type[_M], data: bytes | str) -> _M:
        return cls.from_dict(_object(data, cls.KIND))


@dataclass(frozen=True)
class RoundAnnounce(_Message):
    """The current round (``state`` open), or the latest one closed while the schedule
    holds the next back (``next_round_at``)."""

    KIND = "announce"

    round: int
    base_model: str
    state: str  # OPEN or CLOSED (anything but "open" is closed, as boxes always read it)
    deadline: float
    quorum: int
    count_scale: float  # boxes encrypt n_i * c with it (federation.crypto.packing)
    chunk_size: int
    part_key: str = ""  # the federated part's key: a box of another part does not join
    devices: tuple[str, ...] = ()  # the active devices (empty: not listed, all may join)
    # a box with fewer enrolled samples added since its last update sits the round out
    min_new_samples: int = 0
    dp: DpConfig | None = None  # differential privacy the federation asks of every box
    bounds: Bounds | None = None  # cap on n, clip of the delta (federation.crypto.bounds)
    opened_at: float | None = None
    pinned: bool | None = None  # the base is a version the operator pinned (aggregator.rounds.pins)
    next_round_at: float | None = None  # closed, held back by the schedule until then
    # the CKKS key (federation.crypto.epochs) updates must be encrypted under, and its
    # epoch; absent ("", 0): an aggregator from before key epochs
    key_id: str = ""
    key_epoch: int = 0

    @property
    def open(self) -> bool:
        return self.state == OPEN

    def result_policy(self) -> ResultPolicy | None:
        """What boxes check this round's result against (None: the round has no bounds)."""
        if self.bounds is None:
            return None
        return ResultPolicy(float(self.count_scale), self.bounds, self.dp, max(1, self.quorum))

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "round": self.round, "base_model": self.base_model, "state": self.state,
            "deadline": self.deadline, "quorum": self.quorum,
            "count_scale": self.count_scale, "part_key": self.part_key,
            "chunk_size": self.chunk_size, "devices": list(self.devices),
            "min_new_samples": self.min_new_samples,
        }
        optional = {"dp": None if self.dp is None else self.dp.to_dict(),
                    "bounds": None if self.bounds is None else self.bounds.to_dict(),
                    "opened_at": self.opened_at, "pinned": self.pinned,
                    "next_round_at": self.next_round_at,
                    "key_id": self.key_id or None, "key_epoch": self.key_epoch or None}
        body.update((k, v) for k, v in optional.items() if v is not None)
        return body

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> RoundAnnounce:
        k = cls.KIND
        count_scale = _req(body, "count_scale", _NUMBER, k)
        if not count_scale > 0:
            raise FederationError(MALFORMED, f"announce count_scale {count_scale} is not positive")
        devices = _opt(body, "devices", list, k, [])
        if not all(isinstance(d, str) for d in devices):
            raise FederationError(MALFORMED, "announce devices must be a list of device ids")
        # absent: an aggregator from before the round schedule (every box joins)
        min_new = _opt(body, "min_new_samples", int, k, 0)
        if min_new < 0:
            raise FederationError(MALFORMED, f"announce min_new_samples {min_new!r} is not a "
                                  "non-negative integer")
        # A malformed dp object refuses the announce: a box must never send a non-private
        # update into a round that asked for privacy.
        dp = DpConfig.from_dict(body["dp"]) if body.get("dp") is not None else None
        # likewise bounds: a box never sends an update over a cap it could not read
        bounds = Bounds.from_dict(body["bounds"]) if body.get("bounds") is not None else None
        return cls(
            round=_req(body, "round", int, k), base_model=_req(body, "base_model", str, k),
            state=_opt(body, "state", str, k, CLOSED),
            deadline=_req(body, "deadline", _NUMBER, k), quorum=_req(body, "quorum", int, k),
            count_scale=count_scale, chunk_size=_req(body, "chunk_size", int, k),
            part_key=_opt(body, "part_key", str, k, ""), devices=tuple(devices),
            min_new_samples=min_new, dp=dp, bounds=bounds,
            opened_at=_opt(body, "opened_at", _NUMBER, k),
            pinned=_opt(body, "pinned", bool, k),
            next_round_at=_opt(body, "next_round_at", _NUMBER, k),
            key_id=_opt(body, "key_id", str, k, ""), key_epoch=_key_epoch(body),
        )


def _key_epoch(body: Mapping[str, Any]) -> int:
    epoch = _opt(body, "key_epoch", int, RoundAnnounce.KIND, 0)
    if epoch < 0:
        raise FederationError(MALFORMED, f"announce key_epoch {epoch!r} is negative")
    return int(epoch)


@dataclass(frozen=True)
class Ack(_Message):
    """The aggregator's answer to one update (``round``/``msg`` None: an answer to no
    particular update, e.g. a rate-limit report). ``current_round``/``contributions``:
    where the aggregator stands, for the box's log."""

    KIND = "ack"

    accepted: bool
    reason: str | None = None  # a federation.errors reason when refused
    detail: str = ""
    device: str = ""
    round: int | None = None
    msg: str | None = None
    current_round: int | None = None
    contributions: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "round": self.round, "msg": self.msg,
                "accepted": self.accepted, "reason": self.reason, "detail": self.detail,
                "current_round": self.current_round, "contributions": self.contributions}

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> Ack:
        k = cls.KIND
        return cls(
            accepted=_req(body, "accepted", bool, k), reason=_opt(body, "reason", str, k),
            detail=_opt(body, "detail", str, k, ""), device=_opt(body, "device", str, k, ""),
            round=_opt(body, "round", int, k), msg=_opt(body, "msg", str, k),
            current_round=_opt(body, "current_round", int, k),
            contributions=_opt(body, "contributions", int, k),
        )


@dataclass(frozen=True)
class RevocationNotice(_Message):
    """"This device was revoked by the federation".

    ``fedface-aggregator devices revoke`` publishes it on the device's own
    ``ack/<device>`` topic (the one topic only that device reads) as a signed ``ack``
    envelope, just before the broker cuts the device's live session. A box that reads
    it records the revocation, stops reconnecting and says so in ``fedface-edge status``
    / ``doctor``. Boxes that predate it ignore it: as an ack it carries no ``msg`` and no
    ``round``, which an ack needs to be acted on.

    The notice is a courtesy to an honest box; it does not enforce anything. Enforcement
    is the broker's (CRL at the TLS handshake, plus the kick of the live session) and the
    aggregator's (the registry refuses the device's updates).
    """

    KIND = "ack"

    device: str
    revoked_at: float = field(default_factory=time.time)
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        detail = self.detail or (f"device {self.device!r} was revoked by the federation "
                                 "operator; re-provision the box under a new device id")
        # an ack without round and msg: boxes from before the notice do not act on it
        return {"device": self.device, "round": None, "msg": None, "accepted": False,
                "reason": REVOKED_REASON, "revoked": True, "revoked_at": self.revoked_at,
                "detail": detail}

    @staticmethod
    def is_notice(body: Mapping[str, Any]) -> bool:
        return body.get("reason") == REVOKED_REASON and body.get("revoked") is True

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> RevocationNotice:
        if not cls.is_notice(body):
            raise FederationError(MALFORMED, "not a revocation notice")
        detail = _opt(body, "detail", str, cls.KIND, "")
        return cls(_req(body, "device", str, cls.KIND),
                   _opt(body, "revoked_at", _NUMBER, cls.KIND, 0.0),
                   # shown in the box's status and doctor: printable and short
                   "".join(c for c in detail if c.isprintable())[:300])


def parse_ack_topic(data: bytes | str) -> Ack | RevocationNotice:
    """What came on a device's ``ack`` topic: an ack, or the revocation notice."""
    body = _object(data, Ack.KIND)
    if RevocationNotice.is_notice(body):
        return RevocationNotice.from_dict(body)
    return Ack.from_dict(body)


@dataclass(frozen=True)
class ModelPointer(_Message):
    """The retained result boxes should have: its blob's hash, size and chunks, under
    ``result_topic``. ``republished``/``for_round``: an older (pinned) result published
    again as the base of round ``for_round``. ``root_model``: at a region, the root's
    name of the result (its boxes showed only the region's round: helper-43)."""

    KIND = "result"

    round: int
    model: str
    msg: str
    blob_sha256: str
    blob_size: int
    chunks: int
    base_model: str = ""
    contributors: int = 0
    chunk_size: int = 0
    result_topic: str = ""
    republished: bool = False
    for_round: int | None = None
    policy: ResultPolicy | None = None  # the round's bounds, checked by every box
    root_model: str = ""

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "round": self.round, "model": self.model, "base_model": self.base_model,
            "msg": self.msg, "blob_sha256": self.blob_sha256, "blob_size": self.blob_size,
            "chunks": self.chunks, "chunk_size": self.chunk_size,
            "contributors": self.contributors, "result_topic": self.result_topic,
        }
        optional = {"republished": self.republished or None, "for_round": self.for_round,
                    "policy": self.policy.to_dict() if self.policy is not None else None,
                    "root_model": self.root_model or None}
        return body | {key: value for key, value in optional.items() if value is not None}

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> ModelPointer:
        k = "model pointer"
        return cls(
            round=_req(body, "round", int, k), model=_req(body, "model", str, k),
            msg=_req(body, "msg", str, k), blob_sha256=_req(body, "blob_sha256", str, k),
            blob_size=_req(body, "blob_size", int, k), chunks=_req(body, "chunks", int, k),
            base_model=_opt(body, "base_model", str, k, ""),
            contributors=_opt(body, "contributors", int, k, 0),
            chunk_size=_opt(body, "chunk_size", int, k, 0),
            result_topic=_opt(body, "result_topic", str, k, ""),
            republished=_opt(body, "republished", bool, k, False),
            for_round=_opt(body, "for_round", int, k),
            policy=(ResultPolicy.from_dict(body["policy"]) if body.get("policy") is not None
                    else None), root_model=_opt(body, "root_model", str, k, ""))


# A status's ``not_joining`` reasons that the aggregator weighs at a round's deadline
# (aggregator.rounds.deadline): the box has too few new samples (edge.federated.round_gate),
# or it does not serve the round's base, having refused it or rolled it back.
NO_NEW_SAMPLES = "no_new_samples"
BASE_NOT_SERVED = "base_not_served"


@dataclass(frozen=True)
class DeviceStatus(_Message):
    """A box's retained status (docs/protocol.md): online / offline (its will) / revoked,
    the model it federates on, why it sits the open round out, its recent round verdicts
    (federation.verdicts) and its differential-privacy budget. ``sink``: the model sink's
    own fields (the hot swap's ``serving`` and ``last_swap``), carried at the top level."""

    KIND = "status"

    state: str
    device: str
    model: str
    ts: float | None = None  # absent in a status of an old box: the envelope's ts serves
    not_joining: Mapping[str, Any] | None = None
    verdicts: tuple[Verdict, ...] = ()
    dp: Mapping[str, Any] | None = None
    sink: Mapping[str, Any] = field(default_factory=dict)
    release: str = ""  # the software it runs (federation.release); "" from older boxes

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = dict(self.sink)
        if self.release:
            body["release"] = self.release
        if self.not_joining:
            body["not_joining"] = dict(self.not_joining)
        if self.verdicts:
            body["verdicts"] = reported(list(self.verdicts))
        if self.dp is not None:
            body["dp"] = dict(self.dp)
        body.update(state=self.state, device=self.device, model=self.model)
        if self.ts is not None:
            body["ts"] = self.ts
        return body

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> DeviceStatus:
        k = cls.KIND
        known = {"state", "device", "model", "ts", "not_joining", "verdicts", "dp", "release"}
        return cls(
            state=_req(body, "state", str, k), device=_req(body, "device", str, k),
            model=_req(body, "model", str, k), ts=_opt(body, "ts", _NUMBER, k),
            not_joining=_opt(body, "not_joining", dict, k), dp=_opt(body, "dp", dict, k),
            # verdicts are filtered one by one (federation.verdicts): a box's damaged
            # verdict drops that verdict, not its whole status
            verdicts=tuple(from_status(body.get("verdicts"))),
            sink={key: v for key, v in body.items() if key not in known},
            release=printable(_opt(body, "release", str, k, ""), 100),
        )
