"""A box that runs a newer model ends up serving the pinned older one: real
FederationClient, real hot swap (HotSwapper patches and serves the SFace graph),
real aggregator service and CKKS, in-memory bus (the MQTT link has its own tests)."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from aggregator.rounds import pins as model_pins
from aggregator.rounds.coordinator import RoundSettings
from aggregator.service import AggregatorService
from aggregator.state.registry import DeviceRegistry
from aggregator.state.store import Store
from edge.federated.client import ClientConfig, ClientEvent, FederationClient
from edge.serving.hot_swap import HotSwapper
from edge.serving.sink import open_model_sink
from edge.training.drift import NumpyDriftTrainer
from federation import topics
from federation.crypto.ckks import FederationContext, new_secret_context
from federation.crypto.signing import generate_signing_key, public_key_hex
from federation.transport.base import InMemoryBus, InMemoryTransport
from models.registry import optimised_sface_path
from tests.support.aggregator_boxes import envelope_json, latest_announce
from tests.support.federation_rig import PART, GatedTrainer, part_base_vector, wait_for

FED = "pinboxes"
DEVICES = ("box-a", "box-b")


class Samples:
    """A box's enrolled crops as its client counts them (enrolment times)."""

    def __init__(self) -> None:
        self.times = [time.time() - 100.0] * 20  # enrolled before the federation began

    def enrol(self, n: int) -> None:
        self.times += [time.time()] * n

    def crops_enrolled_since(self, since: float) -> int:
        return sum(1 for t in self.times if t > since)


@pytest.fixture(scope="module")
def ctx() -> FederationContext:
    return new_secret_context()


class Federation:
    def __init__(self, root: Path, ctx: FederationContext) -> None:
        self.root, self.ctx = root, ctx
        self.bus = InMemoryBus(synchronous=True)
        self.agg_key = generate_signing_key()
        (root / "agg").mkdir()
        self.keys = {d: generate_signing_key() for d in DEVICES}
        with_store = Store(root / "agg")
        for d, k in self.keys.items():
            DeviceRegistry(with_store).add(d, bytes.fromhex(public_key_hex(k)))
        with_store.close()
        self.threads: list[tuple[threading.Event, threading.Thread, Store]] = []
        self.services: list[AggregatorService] = []
        self.clients: dict[str, FederationClient] = {}
        self.sinks: dict[str, HotSwapper] = {}
        self.trainers: dict[str, GatedTrainer] = {}
        self.samples = {d: Samples() for d in DEVICES}
        self.events: dict[str, list[ClientEvent]] = {d: [] for d in DEVICES}

    def serve(self, rounds: int, min_new_samples: int = 0,
              deadline: float = 60) -> AggregatorService:
        """One `serve` run on the state dir (a new process in production)."""
        store = Store(self.root / "agg")
        service = AggregatorService(
            InMemoryTransport(self.bus, f"agg-{len(self.threads)}"), store, self.ctx.public(),
            self.agg_key, FED, settings=RoundSettings(
                deadline_seconds=deadline, quorum=2, count_scale=64, part_key=PART.key,
                min_new_samples=min_new_samples),
            max_rounds=rounds)
        stop = threading.Event()
        thread = threading.Thread(target=service.run, args=(stop, 0.05), daemon=True)
        thread.start()
        self.threads.append((stop, thread, store))
        self.services.append(service)
        return service

    def host_dies(self) -> None:
        """The aggregator's host goes: its serve stops, and with it its broker link. The
        link was left subscribed on the bus, so a dead serve's intake kept spooling the
        boxes' updates into the same spool files as the next serve's (a restored state's
        round 4 update read empty: "shorter than its header", a loaded CI)."""
        for stop, thread, store in self.threads:
            stop.set()
            thread.join(10)
            store.close()
        for service in self.services:
            service.transport.close()
        self.threads.clear()
        self.services.clear()

    def start_box(self, device: str) -> None:
        base = part_base_vector()
        trainer = GatedTrainer(NumpyDriftTrainer(PART, base, device, 60, 1e-2))
        trainer.gate.set()
        sink = open_model_sink(optimised_sface_path(), PART, self.root / device / "models", None)
        client = FederationClient(
            ClientConfig(FED, device, retry_seconds=0.5, tick_seconds=0.05),
            lambda will: InMemoryTransport(self.bus, device, will=will), self.ctx,
            self.keys[device], self.agg_key.public_key(), trainer, sink,
            self.root / device / "federation", base, on_event=self.events[device].append,
            samples=self.samples[device])
        self.clients[device], self.sinks[device], self.trainers[device] = client, sink, trainer
        client.start()

    def applied(self, device: str) -> list[str]:
        return [e.data["model"] for e in list(self.events[device]) if e.kind == "applied"]

    def close(self) -> None:
        for client in self.clients.values():
            client.stop(timeout=5)
        for sink in self.sinks.values():
            sink.stop()
        for stop, thread, store in self.threads:
            stop.set()
            thread.join(10)
            store.close()


@pytest.fixture
def fed(tmp_path: Path, ctx: FederationContext) -> Iterator[Federation]:
    f = Federation(tmp_path, ctx)
    yield f
    f.close()


def test_boxes_on_round_2_go_back_to_the_pinned_round_1_and_train_from_it(
        fed: Federation) -> None:
    first = fed.serve(rounds=2)
    for device in DEVICES:
        fed.start_box(device)
    wait_for(lambda: all(fed.applied(d) == ["round-1", "round-2"] for d in DEVICES), 60,
             "two rounds applied")
    wait_for(first.finished.is_set, 10, "the first serve run to stop")
    round_1 = {d: next(e.data["vector"] for e in fed.events[d]
                       if e.kind == "applied" and e.data["model"] == "round-1")
               for d in DEVICES}
    for trainer in fed.trainers.values():
        trainer.gate.clear()  # hold the boxes' training so the pinned model can be seen

    operator = Store(fed.root / "agg")  # what `fedface-aggregator models pin` does
    try:
        model_pins.pin(operator, "round-1")
    finally:
        operator.close()
    fed.serve(rounds=1)  # the operator starts serve again (or it was running)
    wait_for(lambda: all(fed.applied(d)[-1:] == ["round-1"] for d in DEVICES), 60,
             "boxes to apply the pinned round-1")
    ann = latest_announce(fed.bus.retained, FED)
    assert (ann["round"], ann["base_model"], ann["pinned"]) == (3, "round-1", True)
    for d in DEVICES:
        sink, client = fed.sinks[d], fed.clients[d]
        assert fed.applied(d) == ["round-1", "round-2", "round-1"]
        assert sink.version == "round-1" and client.version == "round-1"
        # the same weights as the first time round-1 came, served by the engine
        np.testing.assert_array_equal(client.vector, round_1[d])
        pointer = sink.store.load()
        assert pointer is not None and pointer.previous is not None
        assert (pointer.current.version, pointer.previous.version) == ("round-1", "round-2")
        assert "round-2" not in sink.store.blocked()  # the box keeps N-1 usable
    for d in DEVICES:
        events = fed.events[d]
        wait_for(lambda events=events: any(  # type: ignore[misc]
            e.kind == "joined" and e.round == 3 for e in events), 10, f"{d} to join round 3")
    for trainer in fed.trainers.values():
        trainer.gate.set()
    wait_for(lambda: all(fed.applied(d)[-1:] == ["round-3"] for d in DEVICES), 60,
             "round 3 (built on the pinned round-1) applied")
    submitted = [e for d in DEVICES for e in fed.events[d]
                 if e.kind == "submitted" and e.round == 3]
    assert len(submitted) == 2
    retained = fed.bus.retained
    pointer_env = retained[topics.model_latest(FED)]
    _, pointer_body = envelope_json(pointer_env)
    assert (pointer_body["model"], pointer_body["base_model"]) == ("round-3", "round-1")


def _round_1_applied(fed: Federation) -> None:
    first = fed.serve(rounds=1)
    for device in DEVICES:
        fed.start_box(device)
    wait_for(lambda: all(fed.applied(d) == ["round-1"] for d in DEVICES), 60,
             "round 1 applied")
    wait_for(first.finished.is_set, 10, "the first serve run to stop")


def test_boxes_go_back_to_the_pinned_initial_model_and_federate_from_it(
        fed: Federation) -> None:
    """`models pin base`: the way out when no published result serves every box needed
    (one provisioned after a key rotation cannot read the earlier key's results): the
    boxes serve the pretrained model again and the next round builds on it."""
    _round_1_applied(fed)
    for trainer in fed.trainers.values():
        trainer.gate.clear()
    operator = Store(fed.root / "agg")
    try:
        assert model_pins.pin(operator, "base") is None  # the initial model: no round row
    finally:
        operator.close()
    fed.serve(rounds=1)

    def back(device: str) -> list[ClientEvent]:
        return [e for e in list(fed.events[device]) if e.kind == "back_to_initial"]

    wait_for(lambda: all(back(d) for d in DEVICES), 60, "boxes back on the initial model")
    ann = latest_announce(fed.bus.retained, FED)
    assert (ann["round"], ann["base_model"], ann["pinned"]) == (2, "base", True)
    assert topics.model_latest(FED) not in fed.bus.retained  # round-1 is not offered
    for d in DEVICES:
        assert "it was pinned at the aggregator (models pin" in back(d)[0].data["reason"]
        assert fed.sinks[d].version is None and fed.clients[d].version == "base"  # pretrained
        # left for the operator's pin, not refused: listed as refused before, and a later
        # pin of round-1 would have been refused by every box (helper-45)
        assert "round-1" not in fed.sinks[d].store.blocked()
    for trainer in fed.trainers.values():
        trainer.gate.set()
    wait_for(lambda: all(fed.applied(d)[-1:] == ["round-2"] for d in DEVICES), 60,
             "round 2 (built on the initial model) applied")
    _, pointer = envelope_json(fed.bus.retained[topics.model_latest(FED)])
    assert (pointer["model"], pointer["base_model"]) == ("round-2", "base")
    # the operator changes their mind: round-1 after all; every box serves it again
    operator = Store(fed.root / "agg")
    try:
        model_pins.pin(operator, "round-1")
    finally:
        operator.close()
    fed.serve(rounds=1)
    wait_for(lambda: all(fed.applied(d)[-1:] == ["round-1"] for d in DEVICES), 60,
             "boxes to serve the pinned round-1 again")


def test_an_aggregator_restored_from_a_backup_federates_again(fed: Federation) -> None:
    """The aggregator's state dir restored from a copy taken after round 1, while the
    boxes had gone on to round 3: its rounds 2, 3, ... were old announces to them, every
    round failed for want of a quorum, for ever (helper-50). It now hears from the boxes
    how far the federation got, numbers its rounds above that, and serves them its newest
    result, pinned. The people the boxes enrolled for the lost rounds are federated
    again: the boxes count them as new relative to round-1 (their last update, to round
    3, is lost with the state); counted from round 3 they sat every round out, "0 new
    samples since round 3", each round skipped (helper-57)."""
    _round_1_applied(fed)
    backup = fed.root / "agg-backup"
    shutil.copytree(fed.root / "agg", backup)  # last night's backup
    for samples in fed.samples.values():
        samples.enrol(1)  # a newcomer at each site, federated in round 2
    second = fed.serve(rounds=2)
    wait_for(lambda: all(fed.applied(d) == ["round-1", "round-2", "round-3"]
                         for d in DEVICES), 60, "rounds 2 and 3 applied")
    wait_for(second.finished.is_set, 10, "the second serve run to stop")
    fed.host_dies()
    shutil.rmtree(fed.root / "agg")
    shutil.copytree(backup, fed.root / "agg")  # restored

    restored = fed.serve(rounds=1, min_new_samples=1)  # serve's default
    wait_for(lambda: all(fed.applied(d)[-2:] == ["round-1", "round-4"] for d in DEVICES), 60,
             "the boxes back on round-1, then round 4 built on it, applied")
    assert {d: [e.round for e in fed.events[d] if e.kind == "sitting_out"]
            for d in DEVICES} == {d: [] for d in DEVICES}
    assert {d for d in DEVICES for e in fed.events[d]
            if e.kind == "submitted" and e.round == 4} == set(DEVICES)
    for d in DEVICES:
        assert fed.applied(d) == ["round-1", "round-2", "round-3", "round-1", "round-4"]
        assert fed.sinks[d].version == "round-4"
        served = fed.sinks[d].store.load()  # why the box went back, for `model status`
        assert served is not None and served.previous is not None
        assert served.previous.version == "round-1"
        assert "sent again as the base of round 4: the federation went back to it" in \
            served.previous.reason
    _, pointer = envelope_json(fed.bus.retained[topics.model_latest(FED)])
    assert (pointer["model"], pointer["base_model"]) == ("round-4", "round-1")
    state = Store(fed.root / "agg")
    try:
        rounds = {r.round: r for r in state.list_rounds()}
        assert rounds[2].status == "failed"  # opened on the restored state; boxes had passed it
        assert "older than its federation" in (rounds[2].close_reason or "")
        assert 3 not in rounds and rounds[4].status == "published"
        assert rounds[4].announce["pinned"] is True
        # the pin follows the boxes' round 3, not the restored state's round 2 (its log
        # said "round 3 builds on it" while round 4 did)
        assert model_pins.get_pin(state) == model_pins.Pin("round-1", 3)
    finally:
        state.close()

    # round 4 holds their samples: with nothing new since, the boxes sit the next out
    wait_for(restored.finished.is_set, 10, "the restored serve run to stop")
    fed.serve(rounds=1, min_new_samples=1, deadline=2)

    def sat_out(device: str) -> list[str]:
        return [e.data["detail"] for e in list(fed.events[device])
                if e.kind == "sitting_out" and e.round == 5]

    wait_for(lambda: all(sat_out(d) for d in DEVICES), 30, "the boxes to sit round 5 out")
    assert {d: sat_out(d) for d in DEVICES} == {
        d: ["0 new samples since round 4, need 1"] for d in DEVICES}

    def round_5() -> str:
        state = Store(fed.root / "agg")
        try:
            row = state.get_round(5)
            return "" if row is None else f"{row.status} {row.close_reason}"
        finally:
            state.close()

    wait_for(lambda: round_5() == "skipped nothing new", 30, "round 5 skipped: nothing new")


def test_a_state_restored_from_before_any_result_clears_the_lost_pointer(
        fed: Federation) -> None:
    """A state restored from a backup taken before any result, the boxes on round-2: they
    go back to the initial model, but the broker's pointer still named round-2, lost with
    the state, so a box starting meanwhile (a new one, or one whose data dir was reset)
    fetched and served it until the next round's result came."""
    backup = fed.root / "agg-backup"
    shutil.copytree(fed.root / "agg", backup)  # taken at commissioning: the devices only
    _round_1_applied(fed)
    second = fed.serve(rounds=1)
    wait_for(lambda: all(fed.applied(d) == ["round-1", "round-2"] for d in DEVICES), 60,
             "round 2 applied")
    wait_for(second.finished.is_set, 10, "the second serve run to stop")
    _, pointer = envelope_json(fed.bus.retained[topics.model_latest(FED)])
    assert pointer["model"] == "round-2"
    fed.host_dies()
    shutil.rmtree(fed.root / "agg")
    shutil.copytree(backup, fed.root / "agg")  # restored
    for trainer in fed.trainers.values():
        trainer.gate.clear()  # the round opened on the initial model stays open meanwhile
    fed.serve(rounds=1)
    try:
        wait_for(lambda: all(any(e.kind == "back_to_initial" for e in list(fed.events[d]))
                             for d in DEVICES), 60, "boxes back on the initial model")
        wait_for(lambda: topics.model_latest(FED) not in fed.bus.retained, 10,
                 "the pointer at the lost round-2 cleared")
        assert all(fed.applied(d) == ["round-1", "round-2"] for d in DEVICES)
    finally:
        for trainer in fed.trainers.values():
            trainer.gate.set()


def test_a_state_one_round_behind_is_found_out_before_the_deadline(fed: Federation) -> None:
    """Restored from a backup taken before round 1, with the boxes on round-1: the
    restored serve opened round 1 again before the boxes' statuses came in, so "a status
    of round 1" was no news to a state running round 1; the round failed at its deadline
    and the next built on the initial model as if round-1 had been poisoned. A box that
    applied the result of a round this state has open is the same news: found out at
    once, the round failed as older than its federation, the next pinned."""
    backup = fed.root / "agg-backup"
    shutil.copytree(fed.root / "agg", backup)  # taken at commissioning: the devices only
    _round_1_applied(fed)
    fed.host_dies()
    shutil.rmtree(fed.root / "agg")
    shutil.copytree(backup, fed.root / "agg")  # restored
    started = time.monotonic()
    fed.serve(rounds=1, deadline=120)
    wait_for(lambda: all(fed.applied(d) == ["round-1", "round-2"] for d in DEVICES), 60,
             "round 2, on the initial model, applied")
    assert time.monotonic() - started < 60  # not after round 1's deadline (120 s)
    for d in DEVICES:
        back = [e for e in fed.events[d] if e.kind == "back_to_initial"]
        assert len(back) == 1 and back[0].round == 2, back
        assert "poisoned" not in back[0].data["reason"], back[0].data
    state = Store(fed.root / "agg")
    try:
        rounds = {r.round: r for r in state.list_rounds()}
        assert rounds[1].status == "failed"
        assert "older than its federation" in (rounds[1].close_reason or "")
        assert rounds[2].announce["pinned"] is True and rounds[2].status == "published"
    finally:
        state.close()


def test_an_aggregator_recommissioned_empty_numbers_its_rounds_above_its_boxes(
        fed: Federation) -> None:
    """Its state lost, no backup: a new state dir under the same keys, the boxes added
    again. They had applied round 2; the new state's round 1 was an old announce to
    them (docs/operations.md said to reset every box's federation state)."""
    _round_1_applied(fed)
    second = fed.serve(rounds=1)
    wait_for(lambda: all(fed.applied(d) == ["round-1", "round-2"] for d in DEVICES), 60,
             "round 2 applied")
    wait_for(second.finished.is_set, 10, "the second serve run to stop")
    fed.host_dies()
    shutil.rmtree(fed.root / "agg")
    (fed.root / "agg").mkdir()
    state = Store(fed.root / "agg")
    for d, k in fed.keys.items():  # `fedface-aggregator devices add`, again
        DeviceRegistry(state).add(d, bytes.fromhex(public_key_hex(k)))
    state.close()

    fed.serve(rounds=1)

    def back(device: str) -> list[ClientEvent]:
        return [e for e in list(fed.events[device]) if e.kind == "back_to_initial"]

    wait_for(lambda: all(back(d) for d in DEVICES), 60, "boxes back on the initial model")
    wait_for(lambda: all(fed.applied(d)[-1:] == ["round-3"] for d in DEVICES), 60,
             "round 3, built on the initial model, applied")
    _, pointer = envelope_json(fed.bus.retained[topics.model_latest(FED)])
    assert (pointer["model"], pointer["base_model"]) == ("round-3", "base")
