"""Parse the aggregator's control messages (announce, ack, model/latest pointer).

Each is one signed envelope whose payload is a JSON object (aggregator/service.py,
``_publish_json``). Parsing is strict about the fields the client acts on and ignores
the rest, so the aggregator can add fields without breaking deployed boxes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from federation.dp import DpConfig
from federation.envelope import Envelope
from federation.errors import MALFORMED, FederationError


def _body(env: Envelope) -> dict[str, Any]:
    try:
        body = json.loads(env.payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise FederationError(MALFORMED, f"{env.kind} payload is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise FederationError(MALFORMED, f"{env.kind} payload is not a JSON object")
    return body


def _field(body: dict[str, Any], name: str, typ: type | tuple[type, ...], kind: str) -> Any:
    value = body.get(name)
    if not isinstance(value, typ) or (isinstance(value, bool) and typ is not bool):
        raise FederationError(MALFORMED, f"{kind} field {name!r} missing or of the wrong type")
    return value


@dataclass(frozen=True)
class RoundAnnounce:
    round: int
    base_model: str
    open: bool
    deadline: float
    quorum: int
    count_scale: float
    part_key: str
    chunk_size: int
    devices: tuple[str, ...]
    dp: DpConfig | None = None  # differential privacy the federation asks of every box
    # a box with fewer enrolled samples added since its last update sits the round out
    min_new_samples: int = 0


def parse_announce(env: Envelope) -> RoundAnnounce:
    b = _body(env)
    count_scale = float(_field(b, "count_scale", (int, float), "announce"))
    if not count_scale > 0:
        raise FederationError(MALFORMED, f"announce count_scale {count_scale} is not positive")
    devices = b.get("devices") or []
    # A malformed dp object refuses the announce: a box must never send a non-private
    # update into a round that asked for privacy.
    dp = DpConfig.from_dict(b["dp"]) if b.get("dp") is not None else None
    # absent: an aggregator from before the round schedule (every box joins)
    min_new = b.get("min_new_samples", 0)
    if not isinstance(min_new, int) or isinstance(min_new, bool) or min_new < 0:
        raise FederationError(MALFORMED, f"announce min_new_samples {min_new!r} is not a "
                              "non-negative integer")
    return RoundAnnounce(
        round=int(_field(b, "round", int, "announce")),
        base_model=str(_field(b, "base_model", str, "announce")),
        open=b.get("state") == "open",
        deadline=float(_field(b, "deadline", (int, float), "announce")),
        quorum=int(_field(b, "quorum", int, "announce")),
        count_scale=count_scale,
        part_key=str(b.get("part_key") or ""),
        chunk_size=int(_field(b, "chunk_size", int, "announce")),
        devices=tuple(str(d) for d in devices if isinstance(d, str)),
        dp=dp,
        min_new_samples=min_new,
    )


@dataclass(frozen=True)
class Ack:
    round: int | None
    msg: str | None
    accepted: bool
    reason: str | None
    detail: str


def parse_ack(env: Envelope) -> Ack:
    b = _body(env)
    return Ack(
        round=b.get("round") if isinstance(b.get("round"), int) else None,
        msg=b.get("msg") if isinstance(b.get("msg"), str) else None,
        accepted=bool(_field(b, "accepted", bool, "ack")),
        reason=b.get("reason") if isinstance(b.get("reason"), str) else None,
        detail=str(b.get("detail") or ""),
    )


@dataclass(frozen=True)
class ModelPointer:
    round: int
    model: str
    base_model: str
    msg: str
    blob_sha256: str
    blob_size: int
    chunks: int
    contributors: int


def parse_pointer(env: Envelope) -> ModelPointer:
    b = _body(env)
    return ModelPointer(
        round=int(_field(b, "round", int, "model pointer")),
        model=str(_field(b, "model", str, "model pointer")),
        base_model=str(b.get("base_model") or ""),
        msg=str(_field(b, "msg", str, "model pointer")),
        blob_sha256=str(_field(b, "blob_sha256", str, "model pointer")),
        blob_size=int(_field(b, "blob_size", int, "model pointer")),
        chunks=int(_field(b, "chunks", int, "model pointer")),
        contributors=int(b.get("contributors") or 0),
    )
