"""A box with nothing new sits the round out (issue 13.6): the aggregator announces
``min_new_samples``; a box with fewer enrolled samples added since the update it last
sent does not retrain, and says so in its events, its log and its retained status. It
joins the same round as soon as enough new samples are enrolled, and remembers its last
update across a restart. Real aggregator service and client over the in-memory bus."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aggregator.rounds.coordinator import RoundSettings
from aggregator.service import AggregatorService
from aggregator.state.registry import DeviceRegistry
from aggregator.state.store import Store
from edge.federated.client import ClientConfig, ClientEvent, FederationClient
from edge.federated.round_gate import GallerySamples
from edge.federated.verdicts import RoundVerdicts
from edge.training.api import LocalTrainer
from edge.training.drift import NumpyDriftTrainer
from federation import topics
from federation.crypto.ckks import FederationContext, new_secret_context
from federation.crypto.signing import generate_signing_key, public_key_hex
from federation.envelope import decode
from federation.transport.base import InMemoryBus, InMemoryTransport
from tests.support.federation_rig import (
    PART,
    GatedTrainer,
    RecordingSink,
    part_base_vector,
    wait_for,
)

FED = "sitout"
SLOW = 60.0  # condition waits; a loaded machine may be slow, a quiet one returns at once


class Samples:
    """The box's enrolled crops as the client counts them (enrolment times)."""

    def __init__(self, n: int) -> None:
        self.times = [time.time() - 100.0] * n  # enrolled before anything else happened

    def enrol(self, n: int) -> None:
        self.times += [time.time()] * n

    def crops_enrolled_since(self, since: float) -> int:
        return sum(1 for t in self.times if t > since)


@pytest.fixture(scope="module")
def ctx() -> FederationContext:
    return new_secret_context()


def aggregator(tmp_path: Path, ctx: FederationContext, settings: RoundSettings
               ) -> tuple[InMemoryBus, Ed25519PrivateKey, Store, dict[str, Ed25519PrivateKey],
                          AggregatorService]:
    """The real aggregator service on an in-memory bus, boxes a and b registered."""
    bus = InMemoryBus(synchronous=True)
    agg_key = generate_signing_key()
    (tmp_path / "agg").mkdir()
    store = Store(tmp_path / "agg")
    keys = {d: generate_signing_key() for d in ("a", "b")}
    for d, k in keys.items():
        DeviceRegistry(store).add(d, bytes.fromhex(public_key_hex(k)))
    service = AggregatorService(InMemoryTransport(bus, "agg"), store, ctx.public(), agg_key,
                                FED, settings=settings, max_rounds=3)
    return bus, agg_key, store, keys, service


def test_a_box_with_nothing_new_sits_out_and_joins_once_it_has_enough(
    tmp_path: Path, ctx: FederationContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge.federated.joining")
    bus, agg_key, store, keys, service = aggregator(
        tmp_path, ctx, RoundSettings(deadline_seconds=600, quorum=2, count_scale=64,
                                     part_key=PART.key, min_new_samples=2))
    stop = threading.Event()
    thread = threading.Thread(target=service.run, args=(stop, 0.05), daemon=True)
    samples = {"a": Samples(8), "b": Samples(8)}
    events: dict[str, list[ClientEvent]] = {"a": [], "b": []}
    clients: list[FederationClient] = []

    sinks = {"a": RecordingSink(), "b": RecordingSink()}  # the boxes' model stores

    def client(device: str, trainer: LocalTrainer | None = None) -> FederationClient:
        base = part_base_vector()
        c = FederationClient(
            ClientConfig(FED, device, retry_seconds=0.5, tick_seconds=0.05),
            lambda will: InMemoryTransport(bus, device, will=will), ctx, keys[device],
            agg_key.public_key(), trainer or NumpyDriftTrainer(PART, base, device, 50, 1e-2),
            sinks[device], tmp_path / device, base, on_event=events[device].append,
            samples=samples[device])
        clients.append(c)
        c.start()
        return c

    def kinds(device: str, round_no: int) -> list[str]:
        return [e.kind for e in events[device] if e.round == round_no]

    def status(device: str) -> dict:
        return dict(json.loads(decode(bus.retained[topics.status(FED, device)]).payload))

    thread.start()
    try:
        gated = GatedTrainer(NumpyDriftTrainer(PART, part_base_vector(), "b", 50, 1e-2))
        a, b = client("a"), client("b", gated)
        # round 1: neither has sent before, so both join whatever is new
        wait_for(lambda: "joined" in kinds("b", 1), SLOW, "b joined round 1")
        samples["b"].enrol(3)  # while b trains round 1: new for round 2
        gated.gate.set()
        wait_for(lambda: a.version == "round-1" and b.version == "round-1", SLOW, "round 1")
        # round 2: a has nothing new and sits out; b has 3 >= 2 and joins
        wait_for(lambda: "sitting_out" in kinds("a", 2), SLOW, "a sitting out round 2")
        wait_for(lambda: "submitted" in kinds("b", 2), SLOW, "b sent round 2")
        sat = next(e for e in events["a"] if e.kind == "sitting_out")
        assert sat.data["detail"] == "0 new samples since round 1, need 2"
        assert "round 2: sitting out (0 new samples since round 1, need 2)" in caplog.text
        wait_for(lambda: status("a").get("not_joining", {}).get("reason") == "no_new_samples",
                 SLOW, "a's status says why it sits out")
        assert status("a")["not_joining"]["round"] == 2
        time.sleep(0.5)  # many ticks: still sitting out, said once, nothing trained
        assert kinds("a", 2) == ["sitting_out"]
        # "submitted" is said when the update is sealed and queued: its ack comes after
        wait_for(lambda: store.get_round(2).contributions == 1,  # type: ignore[union-attr]
                 SLOW, "a's round-2 update accepted")
        # the round waits (quorum 2); a technician enrols two crops on a: it joins round 2
        samples["a"].enrol(2)
        wait_for(lambda: a.version == "round-2" and b.version == "round-2", SLOW, "round 2")
        assert kinds("a", 2)[:2] == ["sitting_out", "joined"]
        # its status no longer says it sits round 2 out (round 3 may already have opened)
        wait_for(lambda: status("a").get("not_joining", {}).get("round") != 2, SLOW,
                 "a's status after joining")
        # a restarted box remembers its last update: nothing new since round 2 -> sits out
        wait_for(lambda: "sitting_out" in kinds("a", 3), SLOW, "a sitting out round 3")
        a.stop()
        events["a"] = []
        a2 = client("a")  # the same model store: it resumes on round-2, as a rebooted box
        wait_for(lambda: "sitting_out" in kinds("a", 3), SLOW, "restarted a sitting out")
        time.sleep(0.3)
        assert kinds("a", 3) == ["sitting_out"]  # it did not train round 3
        assert a2.version == "round-2"
    finally:
        for c in clients:
            c.stop()
        stop.set()
        thread.join(10)
        service.close()
        store.close()


def test_gallery_samples_counts_crops_enrolled_after_a_mark(tmp_path: Path) -> None:
    import numpy as np

    from edge.gallery.store import Gallery

    gallery = Gallery.open(tmp_path)
    crop = np.zeros((112, 112, 3), np.uint8)
    other = np.full((112, 112, 3), 7, np.uint8)  # the same crop twice is stored once
    gallery.enroll("Ada", [crop, other], np.ones((2, 128), np.float32), "base")
    mark = time.time()
    time.sleep(0.01)
    gallery.enroll("Bob", [crop], np.ones((1, 128), np.float32), "base")
    source = GallerySamples(gallery.path)
    assert source.crops_enrolled_since(0.0) == 3
    assert source.crops_enrolled_since(mark) == 1
    gallery.remove_person("Bob")  # a crop removed is not new
    assert source.crops_enrolled_since(mark) == 0
    gallery.close()


def test_a_box_that_joins_a_round_it_first_sat_out_says_it_sent_and_when_no_result_came(
    tmp_path: Path, ctx: FederationContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The walkthrough's journey: a box sits round 2 out, people are enrolled, it sends
    its update, and round 2 then fails for want of a quorum. Its verdict on round 2 must
    follow: "sat out", then "submitted", then "no result" once round 3 opens on round 1's
    model; never a stale "sat out" for a round it sent to."""
    monkeypatch.setattr("edge.federated.joining.RECOUNT_SECONDS", 0.2)

    def verdict(round_no: int) -> tuple[str, str]:
        """a's verdict on the round as its retained status reports it (operator's view)."""
        raw = rig.bus.retained.get(topics.status(FED, "a"))
        mine = [v for v in (json.loads(decode(raw).payload).get("verdicts") or [])
                if v["round"] == round_no] if raw else []
        return (mine[-1]["outcome"], mine[-1]["reason"]) if mine else ("", "")

    with two_boxes_after_round_1(tmp_path, ctx, 6, 0) as rig:
        store, clients, samples = rig.store, rig.clients, rig.samples
        clients["b"].stop()  # b stays active but sends nothing: round 2 cannot reach quorum
        wait_for(lambda: verdict(2)[0] == "sat_out", SLOW, "a sitting round 2 out")
        samples["a"].enrol(3)
        wait_for(lambda: verdict(2)[0] == "submitted", SLOW, "a's verdict: submitted")
        assert verdict(2)[1] == "update of 50 samples sent"  # the drift trainer says 50
        # "submitted" is said when the update is sealed and queued: its ack comes after
        wait_for(lambda: store.get_round(2).contributions == 1,  # type: ignore[union-attr]
                 SLOW, "a's round-2 update accepted")
        wait_for(lambda: verdict(2)[0] == "no_result", SLOW, "a's verdict: no result")
        assert store.get_round(2).status == "failed"  # type: ignore[union-attr]
        assert verdict(2)[1] == ("the round closed without a result; round 3 opened on "
                                 "round-1")
        # what `fedface-edge model status` prints: one line per round, round 2's the last
        summaries = [v.summary() for v in RoundVerdicts(tmp_path / "a").all()]
        assert summaries[:2] == [
            "round 1: applied (no canary (nothing to compare on this box))",
            "round 2: no result (the round closed without a result; "
            "round 3 opened on round-1)"]
        assert clients["a"].version == "round-1"  # still serving the last result
        # the 3 people enrolled for round 2 were never aggregated: a joins round 3 with
        # them (it sat it out, "0 new samples since round 2", and they were lost)
        wait_for(lambda: verdict(3)[0] in ("submitted", "sat_out"), SLOW,
                 "a's verdict on round 3")
        assert verdict(3)[0] == "submitted", verdict(3)


@dataclass
class TwoBoxes:
    bus: InMemoryBus
    store: Store
    samples: dict[str, Samples]
    clients: dict[str, FederationClient]
    trainers: dict[str, GatedTrainer]  # open after round 1; close one to hold its training


@contextlib.contextmanager
def two_boxes_after_round_1(tmp_path: Path, ctx: FederationContext, deadline: float,
                            max_extensions: int) -> Iterator[TwoBoxes]:
    """The real aggregator service (min_new_samples 1, quorum 2) and two real clients, a
    and b with 8 samples each, once both have applied round 1's result."""
    bus, agg_key, store, keys, service = aggregator(tmp_path, ctx, RoundSettings(
        deadline_seconds=deadline, quorum=2, count_scale=64, part_key=PART.key,
        min_new_samples=1, max_extensions=max_extensions))
    stop = threading.Event()
    thread = threading.Thread(target=service.run, args=(stop, 0.05), daemon=True)
    samples = {"a": Samples(8), "b": Samples(8)}
    clients, trainers = {}, {}
    for device in ("a", "b"):
        base = part_base_vector()
        trainers[device] = GatedTrainer(NumpyDriftTrainer(PART, base, device, 50, 1e-2))
        trainers[device].gate.set()
        clients[device] = FederationClient(
            ClientConfig(FED, device, retry_seconds=0.5, tick_seconds=0.05),
            lambda will, d=device: InMemoryTransport(bus, d, will=will), ctx, keys[device],
            agg_key.public_key(), trainers[device], RecordingSink(), tmp_path / device, base,
            samples=samples[device])
    thread.start()
    try:
        for c in clients.values():
            c.start()
        wait_for(lambda: all(c.version == "round-1" for c in clients.values()), SLOW,
                 "round 1 applied by both boxes")
        yield TwoBoxes(bus, store, samples, clients, trainers)
    finally:
        for c in clients.values():
            c.stop()
        stop.set()
        thread.join(10)
        service.close()
        store.close()


def test_a_round_nobody_has_anything_new_for_is_skipped_not_failed(
    tmp_path: Path, ctx: FederationContext, caplog: pytest.LogCaptureFixture
) -> None:
    """A quiet night: after round 1 neither box enrols anyone, both sit round 2 out and
    say so in their statuses; at its deadline round 2 is skipped (no extension, no
    error, no failed-round rejection) and round 3 opens on round 1's result. Before,
    it was extended three times and then FAILED, every quiet night."""
    caplog.set_level(logging.INFO, logger="aggregator.rounds.coordinator")
    with two_boxes_after_round_1(tmp_path, ctx, 3, 3) as rig:
        store, clients = rig.store, rig.clients
        wait_for(lambda: store.get_round(3) is not None, SLOW, "round 3 opened")
        skipped = store.get_round(2)
        assert skipped is not None and skipped.status == "skipped"
        assert skipped.extensions == 0 and skipped.close_reason == "nothing new"
        assert skipped.contributions == 0
        assert store.get_round(3).base_model == "round-1"  # type: ignore[union-attr]
        assert "round 2 skipped: nothing new: a, b sat out (fewer new samples than 1)" \
            in caplog.text
        assert "FAILED" not in caplog.text and "extended" not in caplog.text
        assert "rejected.round_failed" not in store.counters()
        assert all(c.version == "round-1" for c in clients.values())  # nothing retrained


def test_newcomers_on_one_box_are_federated_when_the_others_had_nothing_new(
    tmp_path: Path, ctx: FederationContext, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """b enrols three people after round 1 and sends its update; a has nothing new and
    sits out, so the round has 1 of the 2 updates its quorum needs. At the deadline it is
    re-announced once open to every box (min_new_samples 0): a retrains on its same
    faces and the round is published with both updates, b's newcomers in it, using up no
    extension (there are none). Before, it failed, and b's newcomers waited for a night
    on which a enrolled someone too."""
    monkeypatch.setattr("edge.federated.joining.RECOUNT_SECONDS", 0.2)
    caplog.set_level(logging.INFO, logger="aggregator.rounds")
    with two_boxes_after_round_1(tmp_path, ctx, 4, 0) as rig:
        store, clients = rig.store, rig.clients
        rig.samples["b"].enrol(3)
        wait_for(lambda: all(c.version not in (None, "round-1") for c in clients.values()),
                 SLOW, "the round with b's newcomers applied by both boxes")
        assert clients["a"].version == clients["b"].version
        round_no = int(str(clients["b"].version).removeprefix("round-"))
        published = store.get_round(round_no)
        assert published is not None and published.status == "published"
        assert published.contributions == 2 and published.extensions == 0
        assert sorted(store.contributors(round_no)) == ["a", "b"]
        assert (f"round {round_no}: 1 update(s) < quorum 2; a sat out (fewer new samples "
                "than 1): reopened to every box") in caplog.text
        # the rounds between (if b's recount came after a deadline) were skipped, none failed
        assert all(store.get_round(r).status == "skipped"  # type: ignore[union-attr]
                   for r in range(2, round_no))
        verdicts = {v.round: v.outcome for v in RoundVerdicts(tmp_path / "a").all()}
        assert verdicts[round_no] == "applied"  # after its sat_out, then submitted


def test_a_round_the_boxes_joined_late_is_not_skipped_while_they_train(
    tmp_path: Path, ctx: FederationContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A walkthrough enrolled people on both boxes 11 s before round 9's deadline: both
    joined and trained, yet serve skipped the round as 'nothing new' (it read their
    earlier "sat out" verdicts, which stay until an update is sealed) and refused their
    updates as late. A box's status says it no longer sits out the moment it joins."""
    monkeypatch.setattr("edge.federated.joining.RECOUNT_SECONDS", 0.2)
    with two_boxes_after_round_1(tmp_path, ctx, 3, 3) as rig:
        store = rig.store
        wait_for(lambda: store.get_round(2) is not None, SLOW, "round 2 opened")
        for device in ("a", "b"):
            rig.trainers[device].gate.clear()  # their training takes a while
            rig.samples[device].enrol(2)
        # past round 2's deadline with both boxes training: extended, not skipped
        wait_for(lambda: store.get_round(2).extensions >= 1,  # type: ignore[union-attr]
                 SLOW, "round 2 extended at its deadline")
        assert store.get_round(2).status == "open"  # type: ignore[union-attr]
        for device in ("a", "b"):
            rig.trainers[device].gate.set()
        wait_for(lambda: all(c.version == "round-2" for c in rig.clients.values()), SLOW,
                 "round 2 published with both boxes' newcomers")
        assert store.get_round(2).contributions == 2  # type: ignore[union-attr]


class NobodyEnrolled(NumpyDriftTrainer):
    """A box registered before anyone was enrolled on it: training cannot run."""

    def local_update(self, global_vector, round_no):  # type: ignore[no-untyped-def]
        from edge.training.api import TooFewPeople

        raise TooFewPeople("0 enrolled people: training needs at least 2 (enrol more "
                           "people before training)")


def test_a_box_with_too_few_people_sits_out_and_says_so(
    tmp_path: Path, ctx: FederationContext
) -> None:
    """helper-42: a registered box with nobody enrolled said `joined` then `error (0
    enrolled people ...)` every round, and its status said nothing, so the aggregator
    waited for word from it and quiet nights were failed instead of skipped. It now sits
    the round out for want of samples, as its status says, and the aggregator weighs it."""
    bus, agg_key, store, keys, service = aggregator(
        tmp_path, ctx, RoundSettings(deadline_seconds=600, quorum=2, count_scale=64,
                                     part_key=PART.key))
    stop = threading.Event()
    thread = threading.Thread(target=service.run, args=(stop, 0.05), daemon=True)
    events: list[ClientEvent] = []
    base = part_base_vector()
    client = FederationClient(
        ClientConfig(FED, "b", retry_seconds=0.5, tick_seconds=0.05),
        lambda will: InMemoryTransport(bus, "b", will=will), ctx, keys["b"],
        agg_key.public_key(), NobodyEnrolled(PART, base, "b", 50, 1e-2), RecordingSink(),
        tmp_path / "b", base, on_event=events.append)
    thread.start()
    client.start()
    try:
        wait_for(lambda: service.coordinator.sat_out.get("b") == "no_new_samples", SLOW,
                 "the aggregator hears that b sits round 1 out")
        status = json.loads(decode(bus.retained[topics.status(FED, "b")]).payload)
        assert status["not_joining"] == {
            "reason": "no_new_samples", "round": 1,
            "detail": "0 enrolled people: training needs at least 2 (enrol more people "
                      "before training)"}, status
        assert [e.kind for e in events if e.round == 1][-1] == "sitting_out", events
        assert "error" not in [e.kind for e in events], events
    finally:
        client.stop()
        stop.set()
        thread.join(10)
        store.close()
