"""The federation client federates from what the box serves, also after another process
moved it (`fedface-edge model rollback` while `join` runs)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from edge.federated.api import ClientConfig, ClientEvent, ClientEvents
from edge.federated.joining import RoundJoiner
from edge.federated.result_apply import ResultApplier
from edge.federated.round_gate import save_client_state
from edge.federated.verdicts import RoundVerdicts
from federation.crypto.ckks import FederationContext
from federation.messages import OPEN, RoundAnnounce
from tests.support.federation_rig import PART


def _applier(sink: Any, version: str, vector: np.ndarray) -> ResultApplier:
    """The applier with only what following the sink needs (no results come here)."""
    unused: Any = None
    return ResultApplier(unused, unused, PART, sink, unused, unused, version=version,
                         vector=vector, max_relative_change=1.0, verify=lambda *_: None,
                         publish_status=lambda: None, applied=lambda: None)


class ServingSink:
    """Stands in for the hot swapper: what it serves, as its served_vector() says."""

    def __init__(self, version: str, vector: np.ndarray) -> None:
        self.served = (version, vector)

    def served_vector(self) -> tuple[str, np.ndarray]:
        return self.served


def test_a_rollback_by_another_process_is_what_the_next_round_trains_from() -> None:
    rng = np.random.default_rng(0)
    round_1, round_2 = (rng.normal(size=PART.size).astype(np.float32) for _ in range(2))
    sink = ServingSink("round-2", round_2)
    applier = _applier(sink, "round-2", round_2)
    base = applier.base_vector("round-2")
    assert base is not None and np.array_equal(base, round_2)
    sink.served = ("round-1", round_1)  # `model rollback` in another process
    assert applier.base_vector("round-2") is None  # round 3, built on round-2: sat out
    base = applier.base_vector("round-1")
    assert base is not None and np.array_equal(base, round_1)
    assert applier.version == "round-1"


class HotSwapperLike:
    """What the hot swapper shows: ``served`` (its ServedModel: a version) and the vector."""

    def __init__(self, version: str, vector: np.ndarray) -> None:
        self.set(version, vector)
        self.vector_reads = 0

    def set(self, version: str, vector: np.ndarray) -> None:
        self.served, self._vector = SimpleNamespace(version=version), vector

    def served_vector(self) -> tuple[str, np.ndarray]:
        self.vector_reads += 1
        return self.served.version, self._vector


def test_the_status_follows_a_rollback_between_rounds() -> None:
    """The worker's tick: the box's status names the rolled-back model at once (the
    operator's MODEL column kept the version rolled back from until the next round),
    and the vector is read only when the served version's name changed."""
    rng = np.random.default_rng(1)
    round_1, round_2 = (rng.normal(size=PART.size).astype(np.float32) for _ in range(2))
    sink = HotSwapperLike("round-2", round_2)
    applier = _applier(sink, "round-2", round_2)
    assert applier.follow_served() is False and sink.vector_reads == 0  # nothing moved
    sink.set("round-1", round_1)  # `model rollback` in another process
    assert applier.follow_served() is True
    assert applier.version == "round-1" and np.array_equal(applier.vector, round_1)
    assert applier.follow_served() is False and sink.vector_reads == 1


def test_a_served_model_it_cannot_federate_from_is_read_once() -> None:
    """The pretrained model, or a version of another part, has no vector to federate
    from: the tick does not read (nor warn about) it again every half second."""
    rng = np.random.default_rng(2)
    round_2 = rng.normal(size=PART.size).astype(np.float32)

    class OtherPart(HotSwapperLike):
        def served_vector(self) -> None:  # type: ignore[override]
            self.vector_reads += 1
            return None

    sink = OtherPart("round-7-conv14", round_2)
    applier = _applier(sink, "round-2", round_2)
    for _ in range(5):
        assert applier.follow_served() is False
    assert sink.vector_reads == 1 and applier.version == "round-2"


class NothingNew:
    """The box's gallery: no crop enrolled since the update it last sent."""

    def crops_enrolled_since(self, since: float) -> int:
        return 0


class RolledBackStore:
    """The hot swapper's model store as `model rollback` leaves it: N is blocked."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, str]] = {}

    def blocked(self) -> dict[str, dict[str, str]]:
        return self.entries


def test_a_round_built_on_a_rolled_back_model_is_sat_out_and_said_so(tmp_path: Path) -> None:
    """Round 4 opens on round-3 and the box, with nothing new, sits it out ("0 new
    samples"); then its technician rolls round-3 back. The box cannot join round 4 at all
    now, whatever it enrols: its verdict (what `model status` and the operator's
    `status` show) and its retained status must say that, not "0 new samples" (a
    walkthrough found the stale reason), and once, however often it looks again."""
    rng = np.random.default_rng(3)
    round_2, round_3 = (rng.normal(size=PART.size).astype(np.float32) for _ in range(2))
    sink = HotSwapperLike("round-3", round_3)
    sink.store = RolledBackStore()  # type: ignore[attr-defined]
    verdicts = RoundVerdicts(tmp_path)
    said: list[ClientEvent] = []
    applier = _applier(sink, "round-3", round_3)
    applier.verdicts = verdicts
    save_client_state(tmp_path / "client-state.json", 3, time.time())  # sent round 3
    unused: Any = None
    published: list[int] = []
    joiner = RoundJoiner(ClientConfig("fed", "a"), PART, SimpleNamespace(context=None),
                         SimpleNamespace(drop_closed_rounds=lambda _: None), applier,
                         NothingNew(), verdicts, ClientEvents(said.append),
                         tmp_path / "client-state.json",
                         publish_status=lambda: published.append(1), job_done=unused)
    announce = RoundAnnounce(4, "round-3", OPEN, time.time() + 600, 2, 64.0, 262144,
                             part_key=PART.key, min_new_samples=1)
    joiner.announced(announce)
    assert verdicts.of_round(4).reason == "0 new samples since round 3, need 1"  # type: ignore[union-attr]

    sink.set("round-2", round_2)  # `model rollback` in another process
    sink.store.entries["round-3"] = {"reason": "rolled back on this box (model rollback)"}  # type: ignore[attr-defined]
    for _ in range(3):  # the recount every few seconds, a redelivered announce
        joiner.maybe_join()
    verdict = verdicts.of_round(4)
    assert verdict is not None and verdict.outcome == "sat_out"
    assert verdict.reason == ("built on round-3, which this box does not serve: rolled back "
                              "on this box (model rollback); it serves round-2 and joins "
                              "again from the next result it accepts")
    assert joiner.not_joining["reason"] == "base_not_served"
    assert [e.data["reason"] for e in said if e.kind == "sitting_out"] == [
        "no_new_samples", "base_not_served"]
    assert joiner.not_joining["round"] == 4 and len(published) == 2


def test_a_rollback_to_the_pretrained_model_is_followed_too() -> None:
    """`model rollback` from the box's first federated version serves the pretrained
    model, which has no stored vector: the box went on federating from the version it
    blocked, its status kept naming it, and it trained the rounds built on it."""
    rng = np.random.default_rng(4)
    pretrained, round_1 = (rng.normal(size=PART.size).astype(np.float32) for _ in range(2))
    sink = HotSwapperLike("round-1", round_1)
    applier = _applier(sink, "base", pretrained)  # built on the pretrained model...
    applier.version, applier.vector = "round-1", round_1  # ...then round-1 was applied
    sink.served = SimpleNamespace(version="base", model_file=None)  # the hot swap's base
    sink.served_vector = lambda: None  # type: ignore[method-assign]
    assert applier.follow_served() is True
    assert applier.version == "base" and np.array_equal(applier.vector, pretrained)
    assert applier.base_vector("round-1") is None  # the rounds built on it: sat out
    assert applier.follow_served() is False


def test_a_result_that_holds_no_update_gives_the_senders_their_samples_back(
        tmp_path: Path) -> None:
    """A region whose round's sum was of a base the root had moved past publishes the
    root's result for that round, with 0 contributors: the box that sent to it must
    count its samples as new again (a walkthrough's newcomers were never federated, and
    every record said they were)."""
    rng = np.random.default_rng(5)
    round_6 = rng.normal(size=PART.size).astype(np.float32)
    sink = HotSwapperLike("round-6", round_6)
    verdicts = RoundVerdicts(tmp_path)
    applier = _applier(sink, "round-6", round_6)
    applier.verdicts = verdicts
    applier.holding_none.add("round-6")  # its pointer said 0 contributors
    before_newcomers, sent_at = 1000.0, 2000.0
    save_client_state(tmp_path / "client-state.json", 6, sent_at, before_newcomers)
    verdicts.record(6, None, "submitted", "update of 20 samples sent")
    # the result came, and was applied, before the next round's announce (a walkthrough:
    # the verdict said "applied" and the samples stayed spent)
    verdicts.record(6, "round-6", "applied", "canary 100.0% -> 100.0%")
    joiner = RoundJoiner(ClientConfig("fed", "a"), PART, SimpleNamespace(context=None),
                         SimpleNamespace(drop_closed_rounds=lambda _: None), applier,
                         NothingNew(), verdicts, ClientEvents(lambda _: None),
                         tmp_path / "client-state.json", publish_status=lambda: None,
                         job_done=None)  # type: ignore[arg-type]
    joiner.announced(RoundAnnounce(7, "round-6", OPEN, time.time() + 600, 2, 64.0, 262144,
                                   part_key=PART.key, min_new_samples=1))
    verdict = verdicts.of_round(6)
    assert verdict is not None and verdict.outcome == "no_result", verdict
    assert "round-6 (served) holds no update of this box" in verdict.reason
    state = json.loads((tmp_path / "client-state.json").read_text())
    assert state["samples_mark"] == before_newcomers  # the newcomers count as new again
    joiner.maybe_join()  # said once
    assert verdicts.of_round(6) == verdict


class WantingFetcher:
    def __init__(self) -> None:
        self.wanted: list[str] = []

    def want(self, pointer: Any) -> None:
        self.wanted.append(pointer.model)


class BlockingSink(ServingSink):
    """The hot swapper's store: the versions its technician rolled back (blocked)."""

    def __init__(self, version: str, vector: np.ndarray) -> None:
        super().__init__(version, vector)
        self.store = SimpleNamespace(blocked=dict)


def test_the_result_whose_file_was_damaged_is_fetched_again(tmp_path: Path) -> None:
    """The served round-7's file was damaged: the box fell back to round-6, then refused
    the retained round-7 as 'a replayed old result' and sat out every round built on it.
    The result it accepted last is fetched again; an older one, or one its technician
    rolled back, is still refused."""
    from edge.federated.high_water import HighWaterMark
    from federation.messages import ModelPointer

    def pointer(round_no: int) -> ModelPointer:
        return ModelPointer(round_no, f"round-{round_no}", "m", "0" * 64, 10, 1,
                            base_model=f"round-{round_no - 1}")

    mark = HighWaterMark(tmp_path)
    mark.advance(pointer(7))
    rng = np.random.default_rng(2)
    round_6 = rng.normal(size=PART.size).astype(np.float32)
    verdicts = RoundVerdicts(tmp_path)
    verdicts.record(7, "round-7", "applied", "canary ok")
    fetcher = WantingFetcher()
    sink = BlockingSink("round-6", round_6)
    events = ClientEvents(None)
    applier = ResultApplier(fetcher, None, PART, sink, verdicts, events,  # type: ignore[arg-type]
                            version="round-6", vector=round_6, max_relative_change=1.0,
                            verify=lambda *_: None, publish_status=lambda: None,
                            applied=lambda: None, mark=mark)
    applier.follow(pointer(6), None)
    applier.follow(pointer(7), None)
    assert fetcher.wanted == ["round-7"]
    sink.store = SimpleNamespace(blocked=lambda: {"round-7": {"reason": "rolled back"}})
    applier.follow(pointer(7), None)
    assert fetcher.wanted == ["round-7"]  # rolled back by its technician: not again


def test_a_region_s_result_is_served_under_the_root_s_name_too(
        secret_ctx: FederationContext, tmp_path: Path) -> None:
    """helper-43: a region's boxes showed only the region's round (round-12) for a result
    the operator at the root calls round-7. The pointer names it; the swap says so."""
    from federation.crypto.packing import encrypt_update
    from federation.messages import ModelPointer
    from tests.support.federation_rig import RecordingSink

    base = np.ones(PART.size, np.float32)
    trained = base * np.float32(1.01)
    blob = encrypt_update(secret_ctx, trained, 40).to_bytes()
    sink = RecordingSink()
    unused: Any = None  # the fetcher: the blob is handed in whole
    applier = ResultApplier(unused, secret_ctx, PART, sink, RoundVerdicts(tmp_path),
                            ClientEvents(None), version="base", vector=base,
                            max_relative_change=1.0, verify=lambda *_: None,
                            publish_status=lambda: None, applied=lambda: None)
    pointer = ModelPointer(round=12, model="round-12", msg="m", blob_sha256="0" * 64,
                           blob_size=len(blob), chunks=1, base_model="base", contributors=1,
                           root_model="round-7")
    applier._apply(pointer, blob)
    assert sink.reasons == ["federated result, the root's round-7"]
    assert [v for v, _ in sink.applied] == ["round-12"]
