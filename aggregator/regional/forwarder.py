"""Regional side of hierarchical aggregation: forward this region's encrypted partial sum
to a root aggregator and publish the root's (global) result to this region's boxes.

A regional aggregator is an ordinary ``AggregatorService`` for its region's boxes (its
own broker, registry and rounds) with a ``RegionalForwarder`` attached. When one of its
rounds closes, the service's result publication asks the forwarder to ``exchange`` the
region's sum for the root's result:

1. the sum (an EncryptedUpdate whose ``n_updates`` counts the region's updates) is sent
   to the root as signed envelopes of kind ``partial`` on the root's
   ``update/<region id>`` topic, for the root's open round and base model, with a msg id
   derived from the blob (a resend after a crash is the same message: the root answers
   ``duplicate``, never counts it twice);
2. the root adds it like an update (``aggregator.state.regions``) and, once its round closes,
   publishes the global sum; the forwarder verifies it with the root's key and returns
   it, and the region publishes it (signed by the regional key, which its boxes trust)
   as its own round's result. Every box then decrypts the same global average.

Until the root's result is in, ``exchange`` raises ``TransportError``: the service keeps
the round closed and retries on every pump (the same path as a broker that did not
confirm a result), blocking at most ``wait_seconds`` per try.

Model names: the region names its results ``round-<r>`` of its own round numbers; the
forwarder maps each to the root's model name (persisted in ``regional.json``), so the
partial of a region round built on root model M is sent for a root round based on M. If
the root builds on another model (it moved on, or went back: a pin there), the region's
sum is stale: not sent; the region publishes the root's current result instead, and an
open region round follows it at once (``root_moved_past``).

A partial is recorded in ``regional.json`` before its first chunk is sent: after a crash
or a lost PUBACK the region sends the same message again while the root's round is open
(the root counts it once), or waits for that round's result, never for a later one.

The region also keeps a signed, retained status on the root's broker, as a box does
(``status/<region id>``; its will says ``offline``): the root's ``status`` shows it, and
its ``not_joining`` says when the region sits the root's open round out because its
boxes have nothing new (``report_nothing_new``). The root's deadline weighs that like a
box's word (aggregator.rounds.deadline): a night quiet in every region is skipped at the
root as it is in each region, not extended and then failed.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from aggregator.regional.records import STATE_NAME, load_state, region_status, save_state
from aggregator.rounds.records import ResultReady, RootResult
from federation import errors, topics
from federation.chunking import DEFAULT_CHUNK_SIZE, Reassembler, split_blob
from federation.crypto.signing import KeyRing
from federation.envelope import Envelope, decode, encode, verify_envelope
from federation.errors import AWAITING_ROOT, MALFORMED, FederationError, TransportError
from federation.messages import Ack, RoundAnnounce, result_round
from federation.transport.base import Transport

log = logging.getLogger(__name__)
_M = TypeVar("_M")  # a message parsed from the root's payload

CONFIRM_TIMEOUT = 60.0


_UNSAID = -1  # nothing published yet: the first report always goes out


@dataclass(frozen=True)
class _RootRound:
    round: int
    base_model: str
    open: bool


class RegionalForwarder:
    def __init__(
        self,
        root: Transport,
        fed_id: str,
        region_id: str,
        signing_key: Ed25519PrivateKey,
        root_key: Ed25519PublicKey,
        state_dir: Path,
        *,
        root_aggregator_id: str = "aggregator",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        wait_seconds: float = 5.0,
    ) -> None:
        topics.update(fed_id, region_id)  # validates both ids
        self.root = root
        self.fed_id = fed_id
        self.region_id = region_id
        self.signing_key = signing_key
        self.root_aggregator_id = root_aggregator_id
        self.keyring = KeyRing({root_aggregator_id: root_key})
        self.chunk_size = chunk_size
        self.wait_seconds = wait_seconds
        self._path = Path(state_dir) / STATE_NAME
        self._state = load_state(self._path)
        self._cond = threading.Condition()
        self._announce: _RootRound | None = None
        # root round -> (blob, model), in the order they arrived: the last is the root's
        # current (retained) result, which after a pin or rollback there is of an older
        # round than the one before it
        self._results: dict[int, tuple[bytes, str]] = {}
        self._reassembler = Reassembler(max_blob_bytes=512 * 1024 * 1024,
                                        max_inflight_bytes=1024 * 1024 * 1024)
        self.acks: list[Ack] = []
        # what the status on the root's broker says: the root round it sits out, its model
        self._said: tuple[int | None, str] = (_UNSAID, "")

    def start(self) -> None:
        self.root.subscribe(topics.announce(self.fed_id), self._on_announce)
        self.root.subscribe(topics.ack(self.fed_id, self.region_id), self._on_ack)
        self.root.subscribe(topics.result_filter(self.fed_id), self._on_result)

    def close(self) -> None:
        """Say ``offline`` on the root's broker (a clean stop sends no will), then close."""
        try:
            self.root.publish(topics.status(self.fed_id, self.region_id), region_status(
                self.fed_id, self.region_id, self.signing_key, "offline", self._model()),
                retain=True, wait_timeout=5.0)
        except FederationError as exc:
            log.debug("offline status not published: %s", exc.message)
        self.root.close()

    # --- called by the service's worker after every tick ------------------------------
    def report_nothing_new(self, nothing_new: bool) -> None:
        """Publish the region's status when what it says changed: online, and sitting
        the root's open round out while ``nothing_new`` (aggregator.rounds.deadline)."""
        with self._cond:
            ann = self._announce
        sitting = ann.round if nothing_new and ann is not None and ann.open else None
        model = self._model()
        if (sitting, model) == self._said:
            return
        try:
            self.root.publish(topics.status(self.fed_id, self.region_id), region_status(
                self.fed_id, self.region_id, self.signing_key, "online", model, sitting),
                retain=True)
        except FederationError as exc:  # the root's broker is away: the next tick retries
            log.debug("status not published to the root: %s", exc.message)
            return
        was = self._said[0]
        if sitting is not None and sitting != was:
            log.info("this region's boxes have nothing new: told the root it sits its round "
                     "%d out", sitting)
        elif sitting is None and was not in (None, _UNSAID):
            log.info("this region no longer sits the root's round %d out", was)
        self._said = (sitting, model)

    def root_moved_past(self, base_model: str) -> str | None:
        """The model the root builds on when it is not what this region's ``base_model``
        stands for and its result is in hand (None otherwise): a newer result, an older
        one it went back to (a pin there; a region comparing round numbers never
        followed: helper-41), or its initial model, which has no result (helper-43)."""
        have = self._state["models"].get(base_model, base_model)
        target, blob = self._root_base()
        in_hand = blob is not None or result_round(target) is None
        return target if target and target != have and in_hand else None

    def _root_base(self) -> tuple[str, bytes | None]:
        """What the root builds on (the base of its open round whose result is not in; else
        its latest result) and that result's blob if in hand (None: not yet, or its
        initial model). An open round's announce outlives its result by a moment."""
        with self._cond:
            ann, results = self._announce, list(self._results.items())
        target = ann.base_model if ann is not None and ann.open and ann.round > max(
            (r for r, _ in results), default=0) else (results[-1][1][1] if results else "")
        return target, next((b for _, (b, m) in reversed(results) if m == target), None)

    def _model(self) -> str:
        """The root model this region builds on now (as the root's announce names it)."""
        with self._cond:
            return "" if self._announce is None else self._announce.base_model

    # --- called by the service's worker (result publication) ---------------------------
    def exchange(self, event: ResultReady, partial_blob: bytes) -> RootResult:
        """The root's result for this closed region round (TransportError: not yet), and
        whether the region's sum is in it (not when it was of a stale base)."""
        if not partial_blob:  # a round closed without updates to follow the root's model
            return self._follow_root(event)
        key = str(event.round)
        sent = self._state["forwarded"].get(key)
        if sent is None or not sent.get("msg"):  # new, or stale when last decided: the
            sent = self._forward(event, partial_blob)  # root may have moved since
        elif not sent.get("confirmed", True):
            self._resend(event, partial_blob, sent)
        else:
            sent = self._follow_ended_root_round(event, partial_blob, sent)
        deadline = time.monotonic() + self.wait_seconds
        with self._cond:
            while True:
                found = self._result_for(int(sent["root_round"]))
                if found is not None or not self._cond.wait(deadline - time.monotonic()):
                    break
        if found is None:
            raise TransportError(AWAITING_ROOT, f"region round {event.round}: waiting for "
                                 f"the root's result of its round {sent['root_round']}")
        blob, root_model = found
        self._state["models"][event.model] = root_model
        save_state(self._path, self._state)
        log.info("region round %d: publishing the root's result %s (%d bytes)", event.round,
                 root_model, len(blob))
        return RootResult(blob, included=bool(sent.get("msg")), root_model=root_model)

    def _follow_root(self, event: ResultReady) -> RootResult:
        """The root's current result, for a region round that holds no update (closed to
        follow it: aggregator.rounds.events), whether or not its next round is open."""
        root_model, blob = self._root_base()
        if blob is None:
            raise TransportError(AWAITING_ROOT, f"region round {event.round}: no result of "
                                 f"the root's {root_model or 'model'} yet")
        self._state["models"][event.model] = root_model
        save_state(self._path, self._state)
        log.info("region round %d: publishing the root's current result %s (%d bytes)",
                 event.round, root_model, len(blob))
        return RootResult(blob, included=False, root_model=root_model)

    def _follow_ended_root_round(self, event: ResultReady, blob: bytes,
                                 sent: dict[str, Any]) -> dict[str, Any]:
        """The root round the partial went to ended without a result (failed at its
        deadline, or skipped) and the root's next round builds on the same base: the
        partial is as valid there, so it goes to that round. A walkthrough's region
        waited for that round's result for good, opened no more rounds, and its boxes'
        newcomers were never federated."""
        with self._cond:
            ann = self._announce
            ended = self._result_for(int(sent["root_round"])) is None
        if (ann is None or not ann.open or ann.round <= int(sent["root_round"]) or not ended):
            return sent
        if ann.base_model != sent.get("model"):  # the root went back (a pin there): the
            return self._stale(event, ann, str(sent.get("model")))  # partial is stale
        log.warning("region round %d: the root's round %s ended without a result; sending "
                    "the partial to its round %d (same base %s)", event.round,
                    sent["root_round"], ann.round, ann.base_model)
        again = {"root_round": ann.round, "model": ann.base_model, "msg": hashlib.sha256(
            f"fedface-partial\0{ann.round}\0".encode() + blob).hexdigest()[:32],
            "confirmed": False}
        self._state["forwarded"][str(event.round)] = again
        save_state(self._path, self._state)
        self._publish_partial(event, blob, again)
        return again

    def _forward(self, event: ResultReady, blob: bytes) -> dict[str, Any]:
        with self._cond:
            self._cond.wait_for(lambda: self._announce is not None, self.wait_seconds)
            ann = self._announce
        if ann is None:
            raise TransportError(AWAITING_ROOT, f"region round {event.round}: no announce "
                                 "from the root aggregator yet")
        wanted_base = self._state["models"].get(event.base_model, event.base_model)
        if ann.base_model == wanted_base and not ann.open:
            # the root's round on this base closed (its result is on the way) or the root
            # stopped: nothing to send to yet
            raise TransportError(AWAITING_ROOT, f"region round {event.round}: the root has no "
                                 "open round yet")
        if ann.base_model != wanted_base:
            return self._stale(event, ann, wanted_base)
        msg = hashlib.sha256(b"fedface-partial\0" + blob).hexdigest()[:32]
        # Recorded BEFORE the first chunk leaves: the root may count the partial (and
        # ack it) before this process sees the broker's PUBACK. A crash or a lost
        # PUBACK then leaves an unconfirmed entry, and the retry resends the SAME
        # message (the root dedupes it) or waits for that root round's result,
        # instead of taking the root's next round for a stale base and waiting a
        # whole root round for nothing.
        sent = {"root_round": ann.round, "model": ann.base_model, "msg": msg,
                "confirmed": False}
        self._state["forwarded"][str(event.round)] = sent
        save_state(self._path, self._state)
        self._publish_partial(event, blob, sent)
        return sent

    def _stale(self, event: ResultReady, ann: _RootRound, built_on: str) -> dict[str, Any]:
        """The root's round builds on another model than this region's sum: the sum is
        not forwarded, and the root's base is published for it once in hand (else
        TransportError, decided again at the next try; it waited for the root's open
        round's result, which never came when every region was stale: helper-41)."""
        with self._cond:
            base_round = next((r for r, (_, model) in self._results.items()
                               if model == ann.base_model), None)
        if base_round is None:  # the initial model (pinned at the root) has no result:
            # the region's events fail this round and pin it here too
            initial = result_round(ann.base_model) is None
            raise TransportError(errors.ROOT_ON_INITIAL if initial else AWAITING_ROOT, (
                f"region round {event.round} is built on the root's {built_on}, the root's "
                f"round {ann.round} on its {ann.base_model}: this region's sum is NOT "
                "forwarded") + ("" if initial else ", and the root's result of it has "
                                "not arrived yet"))
        log.error("region round %d is built on the root's %s but the root's round %d on its "
                  "%s: the region's sum is NOT forwarded; publishing the root's result of "
                  "its round %d (the boxes that sent count their samples as new again)",
                  event.round, built_on, ann.round, ann.base_model, base_round)
        sent: dict[str, Any] = {"root_round": base_round, "msg": None}
        self._state["forwarded"][str(event.round)] = sent
        save_state(self._path, self._state)
        return sent

    def _resend(self, event: ResultReady, blob: bytes, sent: dict[str, Any]) -> None:
        """An unconfirmed partial (crash or lost PUBACK): send it again while the root's
        round is open (same msg id: the root counts it once); once that round closed, its
        result is the one to wait for (whether or not the partial made it in)."""
        with self._cond:
            ann = self._announce
        if ann is None or not ann.open or ann.round != int(sent["root_round"]):
            return
        if self._result_for(int(sent["root_round"])) is not None:
            return
        log.warning("region round %d: the root's round %d is open and the partial %s was "
                    "not confirmed; sending it again (same msg id)", event.round, ann.round,
                    sent["msg"])
        self._publish_partial(event, blob, sent)

    def _publish_partial(self, event: ResultReady, blob: bytes, sent: dict[str, Any]) -> None:
        root_round = int(sent["root_round"])
        envs = split_blob(blob, self.signing_key, kind="partial", fed=self.fed_id,
                          sender=self.region_id, round=root_round, model=str(sent["model"]),
                          chunk_size=self.chunk_size, msg=str(sent["msg"]))
        topic = topics.update(self.fed_id, self.region_id)
        for i, env in enumerate(envs):
            last = i == len(envs) - 1
            self.root.publish(topic, encode(env), wait_timeout=CONFIRM_TIMEOUT if last else None)
        log.info("region round %d: partial sum (%d bytes, %d chunks) sent to root round %d",
                 event.round, len(blob), len(envs), root_round)
        sent["confirmed"] = True
        save_state(self._path, self._state)

    def _result_for(self, root_round: int) -> tuple[bytes, str] | None:
        if root_round in self._results:
            return self._results[root_round]
        # Superseded (the root published a later round first): its latest result serves.
        later = [r for r in self._results if r > root_round]
        return self._results[max(later)] if later else None

    # --- root transport's delivery thread --------------------------------------------
    def _verified(self, payload: bytes, kind: str) -> Envelope | None:
        if not payload:
            return None
        try:
            env = decode(payload)
            if env.kind != kind or env.sender != self.root_aggregator_id:
                raise FederationError(MALFORMED, f"expected a {kind} from the root")
            verify_envelope(env, self.keyring, fed=self.fed_id)
            return env
        except FederationError as exc:
            log.warning("ignoring a message from the root broker (%s): %s", exc.reason,
                        exc.message)
            return None

    def _message(self, payload: bytes, kind: str, parse: Callable[[bytes], _M]) -> _M | None:
        """The root's signed message of that kind, parsed; None (logged) if it is not."""
        env = self._verified(payload, kind)
        if env is None:
            return None
        try:
            return parse(env.payload)
        except FederationError as exc:
            log.warning("ignoring the root's %s (%s): %s", kind, exc.reason, exc.message)
            return None

    def _on_announce(self, topic: str, payload: bytes) -> None:
        ann = self._message(payload, "announce", RoundAnnounce.from_json)
        if ann is None:
            return
        with self._cond:
            self._announce = _RootRound(ann.round, ann.base_model, ann.open)
            self._cond.notify_all()

    def _on_ack(self, topic: str, payload: bytes) -> None:
        ack = self._message(payload, "ack", Ack.from_json)
        if ack is None:
            return
        self.acks.append(ack)
        if ack.accepted or ack.reason == "duplicate":
            log.info("root accepted partial %s for its round %s", ack.msg, ack.round)
        else:
            log.error("root refused partial %s: %s (%s)", ack.msg, ack.reason, ack.detail)

    def _on_result(self, topic: str, payload: bytes) -> None:
        env = self._verified(payload, "result")
        if env is None:
            return
        try:
            blob = self._reassembler.add(env)
        except FederationError as exc:
            log.warning("root result chunk refused (%s): %s", exc.reason, exc.message)
            return
        if blob is not None:
            with self._cond:
                self._results.pop(env.round, None)  # arrived again: now the current one
                self._results[env.round] = (blob, env.model)
                while len(self._results) > 2:  # keep the last two that arrived
                    del self._results[next(iter(self._results))]
                self._cond.notify_all()
