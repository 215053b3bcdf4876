"""FederationClient logic against the real aggregator service over the in-memory bus
(real CKKS, signatures, chunking; the MQTT link is covered by tests/test_e2e_*.py)."""

from __future__ import annotations

import errno
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from aggregator.rounds.coordinator import RoundSettings
from aggregator.service import AggregatorService
from aggregator.state.registry import DeviceRegistry
from aggregator.state.store import Store
from edge.federated.client import ClientConfig, ClientEvent, FederationClient
from edge.training.api import LocalUpdate
from edge.training.drift import NumpyDriftTrainer
from federation import topics
from federation.chunking import split_blob
from federation.crypto.ckks import FederationContext, new_secret_context
from federation.crypto.signing import KeyRing, generate_signing_key, public_key_hex
from federation.envelope import decode, encode, verify_envelope
from federation.transport.base import InMemoryBus, InMemoryTransport
from tests.support.federation_rig import (
    PART,
    GatedTrainer,
    RecordingSink,
    part_base_vector,
    wait_for,
)

FED = "unit"


@pytest.fixture(scope="module")
def ctx() -> FederationContext:
    return new_secret_context()


class Setup:
    def __init__(self, root: Path, ctx: FederationContext, devices: list[str], quorum: int,
                 rounds: int) -> None:
        self.root, self.ctx = root, ctx
        self.bus = InMemoryBus(synchronous=True)
        self.agg_key = generate_signing_key()
        (root / "agg").mkdir()
        self.store = Store(root / "agg")
        self.keys = {d: generate_signing_key() for d in devices}
        for d, k in self.keys.items():
            DeviceRegistry(self.store).add(d, bytes.fromhex(public_key_hex(k)))
        self.service = AggregatorService(
            InMemoryTransport(self.bus, "agg"), self.store, ctx.public(), self.agg_key, FED,
            settings=RoundSettings(deadline_seconds=60, quorum=quorum, count_scale=64,
                                   part_key=PART.key), max_rounds=rounds)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.service.run, args=(self.stop, 0.05),
                                       daemon=True)
        self.transports: dict[str, InMemoryTransport] = {}

    def start_aggregator(self) -> None:
        self.thread.start()

    def client(self, device: str, trainer=None, n: int = 50, connect: bool = True,
               sink: RecordingSink | None = None
               ) -> tuple[FederationClient, list[ClientEvent], RecordingSink]:
        events: list[ClientEvent] = []
        sink = sink if sink is not None else RecordingSink()
        base = part_base_vector()

        def factory(will):
            t = InMemoryTransport(self.bus, device, will=will, connect=connect)
            self.transports[device] = t
            return t

        c = FederationClient(
            ClientConfig(FED, device, retry_seconds=0.5, tick_seconds=0.05), factory, self.ctx,
            self.keys[device], self.agg_key.public_key(),
            trainer or NumpyDriftTrainer(PART, base, device, n, 1e-2), sink,
            self.root / device, base, on_event=events.append)
        return c, events, sink

    def close(self) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(5)


@pytest.fixture
def make_setup(tmp_path: Path, ctx: FederationContext) -> Iterator:
    made: list[Setup] = []

    def make(devices: list[str], quorum: int, rounds: int) -> Setup:
        s = Setup(tmp_path, ctx, devices, quorum, rounds)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def _status(s: Setup, device: str) -> dict:
    env = decode(s.bus.retained[topics.status(FED, device)])
    verify_envelope(env, KeyRing({device: s.keys[device].public_key()}), fed=FED)
    body: dict = json.loads(env.payload)
    return body


def _gated(device: str, n: int = 50) -> GatedTrainer:
    return GatedTrainer(NumpyDriftTrainer(PART, part_base_vector(), device, n, 1e-2))


def _a_joins_with_training_held(
    s: Setup,
) -> tuple[FederationClient, list[ClientEvent], GatedTrainer]:
    """The aggregator opens round 1 and box a joins it; its update waits on ``gate``."""
    s.start_aggregator()
    gated = _gated("a")
    a, events, _ = s.client("a", trainer=gated)
    a.start()
    wait_for(lambda: any(e.kind == "joined" for e in events), 10, "a joined round 1")
    return a, events, gated


def test_update_kept_on_disk_while_offline_then_sent(make_setup) -> None:
    s = make_setup(["a", "b"], quorum=2, rounds=1)
    a, events, gated = _a_joins_with_training_held(s)
    status_topic = topics.status(FED, "a")
    # "joined" can come before the worker's first tick publishes the online status
    wait_for(
        lambda: status_topic in s.bus.retained and _status(s, "a")["state"] == "online",
        5,
        "online status",
    )
    s.transports["a"].drop()  # link lost while training: the broker publishes the will
    assert _status(s, "a")["state"] == "offline"
    gated.gate.set()
    # sealed while offline: queued, not "submitted" (which a technician read as sent)
    wait_for(lambda: any(e.kind == "queued" for e in events), 20, "a queued its update")
    time.sleep(0.3)  # a few retry ticks while offline
    assert not any(e.kind in ("submitted", "sent") for e in events)
    files = list((s.root / "a" / "outbox").glob("*.upd"))
    assert len(files) == 1 and files[0].stat().st_mode & 0o777 == 0o600
    assert a.pending_updates == 1
    s.transports["a"].reconnect()
    wait_for(lambda: any(e.kind == "acked" for e in events), 20, "update acked after reconnect")
    kinds = [e.kind for e in events]
    assert kinds.index("queued") < kinds.index("sent") < kinds.index("acked"), kinds
    wait_for(lambda: _status(s, "a")["state"] == "online", 5, "online status after reconnect")
    assert status_topic in s.bus.retained
    assert a.pending_updates == 0
    b, _, _ = s.client("b")
    b.start()
    wait_for(lambda: b.version == "round-1" and a.version == "round-1", 20, "round 1 applied")
    wait_for(lambda: _status(s, "a")["model"] == "round-1", 5, "status names the new model")
    a.stop()  # graceful: says offline itself (no will)
    assert _status(s, "a")["state"] == "offline"
    b.stop()


def test_pending_update_resent_by_a_new_client_instance(make_setup) -> None:
    s = make_setup(["a", "b"], quorum=2, rounds=1)
    a, events, gated = _a_joins_with_training_held(s)
    s.transports["a"].drop()  # link lost before the update is sealed: publish fails
    gated.gate.set()
    wait_for(lambda: any(e.kind == "queued" for e in events), 20, "a queued its update")
    assert a.pending_updates == 1
    a.stop()  # box reboots with the update still in its outbox
    a2, events2, _ = s.client("a")
    assert a2.pending_updates == 1
    a2.start()
    wait_for(lambda: any(e.kind == "acked" for e in events2), 20, "resent update acked")
    assert not any(e.kind == "joined" for e in events2)  # it did not train round 1 again
    # the verdict said queued across the restart: going out is said by the new instance
    assert any(e.kind == "sent" and e.round == 1 for e in events2)
    b, _, _ = s.client("b")
    b.start()
    wait_for(lambda: a2.version == "round-1" and b.version == "round-1", 20, "round closes")
    assert a2.pending_updates == 0
    a2.stop()
    b.stop()


class HugeTrainer:
    """A box whose 'update' triples every weight: the federated average is implausible."""

    part = PART

    def local_update(self, global_vector, round_no):
        base = part_base_vector() if global_vector is None else global_vector
        return LocalUpdate(vector=(base * 3).astype(np.float32), n_samples=200, seconds=0.0)


def test_implausible_result_is_refused_and_model_kept(make_setup) -> None:
    s = make_setup(["a", "bad"], quorum=2, rounds=1)
    s.start_aggregator()
    a, events, sink = s.client("a", n=10)
    bad, _, _ = s.client("bad", trainer=HugeTrainer())
    a.start()
    bad.start()
    wait_for(lambda: any(e.kind == "result_rejected" for e in events), 20, "result refused")
    rejected = next(e for e in events if e.kind == "result_rejected")
    assert rejected.data["reason"] == "out_of_range"
    assert a.version == "base" and sink.applied == []

    def refusals() -> list[dict]:
        if topics.status(FED, "a") not in s.bus.retained:
            return []
        return [v for v in _status(s, "a").get("verdicts", []) if v["round"] == 1]

    # the refusal goes out at once in the box's signed status, with its machine reason:
    # the aggregator counts it (aggregator.rounds.poison)
    wait_for(lambda: bool(refusals()), 10, "the refusal in the box's status")
    (verdict,) = refusals()
    assert (verdict["outcome"], verdict["model"], verdict["code"]) == \
        ("rejected", "round-1", "out_of_range")
    np.testing.assert_array_equal(a.vector, part_base_vector())
    a.stop()
    bad.stop()


def test_forged_announce_is_ignored(make_setup) -> None:
    s = make_setup(["a"], quorum=1, rounds=1)  # aggregator not started: only the forgery
    a, events, _ = s.client("a")
    a.start()
    forger = generate_signing_key()
    body = json.dumps({"round": 1, "base_model": "base", "state": "open", "deadline": 0,
                       "quorum": 1, "count_scale": 64, "part_key": PART.key,
                       "chunk_size": 65536, "devices": ["a"]}).encode()
    (env,) = split_blob(body, forger, kind="announce", fed=FED, sender="aggregator", round=1,
                        model="base", chunk_size=len(body))
    s.bus.publish(topics.announce(FED), encode(env), retain=True)
    # the worker handles it on its own thread: wait for it (a fixed sleep can be too
    # short on a loaded machine)
    wait_for(lambda: a.counters.get("bad_signature") == 1, 10, "the forged announce refused")
    assert not any(e.kind == "joined" for e in events)
    a.stop()


class FullDiskOnceSink(RecordingSink):
    """The hot swapper on a full disk: its first write of a version fails with ENOSPC."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 0

    def apply(self, version: str, vector: np.ndarray,
              reason: str = "federated result") -> None:
        if self.failures == 0:
            self.failures += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        super().apply(version, vector)


def test_a_result_the_box_could_not_store_is_applied_again(
        make_setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk while the box stored round 1's result: it was dropped with 'unexpected
    error', no verdict, and the box waited for good on a base it never got (the next
    round's join too). It is applied again from memory once the retry time passed, and
    the failure is no verdict (the aggregator would count it as a refusal)."""
    import edge.federated.result_apply as result_apply

    monkeypatch.setattr(result_apply, "STORE_RETRY_S", 0.5)
    s = make_setup(["a"], quorum=1, rounds=2)
    s.start_aggregator()
    sink = FullDiskOnceSink()
    a, events, _ = s.client("a", sink=sink)
    a.start()
    try:
        wait_for(lambda: any(e.kind == "error" and e.round == 1 for e in events), 30,
                 "the box to fail storing round 1's result")
        assert a.verdicts.of_round(1) is None or a.verdicts.of_round(1).outcome != "rejected"
        wait_for(lambda: any(e.kind == "applied" and e.round == 1 for e in events), 30,
                 "round 1's result applied on the retry")
        assert [v for v, _ in sink.applied][:1] == ["round-1"]
        wait_for(lambda: any(e.kind == "applied" and e.round == 2 for e in events), 30,
                 "the box to join and apply round 2, built on round-1")
    finally:
        a.stop()


def test_an_update_the_aggregator_refuses_is_said_and_its_samples_count_again(
        make_setup) -> None:
    """A restored aggregator refused a box's update (not_open) and the box dropped it, but
    its `model status` still said `round 6: submitted (update of 16 samples sent)`, and its
    samples counted as new only rounds later (helper-50)."""
    from aggregator.rounds.publisher import Publisher, ack_for
    from aggregator.rounds.records import Decision

    s = make_setup(["a", "b"], quorum=2, rounds=1)
    a, events, gated = _a_joins_with_training_held(s)
    s.close()  # the aggregator goes away; a's update waits in its outbox
    gated.gate.set()
    wait_for(lambda: any(e.kind == "submitted" for e in events), 20, "a sealed its update")
    # the verdict is recorded just after the event (a loaded CI saw None in between)
    wait_for(lambda: getattr(a.verdicts.of_round(1), "outcome", None) == "submitted", 20,
             "a's verdict: submitted")
    state = json.loads((s.root / "a" / "client-state.json").read_text())
    assert state["samples_mark"] != state["previous_samples_mark"]  # its samples: sent
    (outbox,) = (s.root / "a" / "outbox").glob("*.upd")
    msg = outbox.stem.partition("-")[2]
    aggregator = Publisher(InMemoryTransport(s.bus, "agg-2"), s.agg_key, FED, "aggregator", 1024)
    aggregator.send_ack(ack_for("a", 1, msg, Decision(False, "not_open",
                                                      "round 1 is not open"), None))
    wait_for(lambda: a.verdicts.of_round(1).outcome == "no_result", 10, "the refusal said")
    assert a.pending_updates == 0
    verdict = a.verdicts.of_round(1)
    assert verdict.reason == ("the aggregator refused this box's update (not_open: round 1 "
                              "is not open); its samples count as new again")
    said = _status(s, "a")["verdicts"]  # what the aggregator and `model status` show
    assert any(v["round"] == 1 and v["outcome"] == "no_result"
               and v["reason"] == verdict.reason for v in said), said
    state = json.loads((s.root / "a" / "client-state.json").read_text())
    assert state["samples_mark"] == state["previous_samples_mark"]
    a.stop()
