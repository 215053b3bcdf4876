"""Hierarchical aggregation over two real Mosquitto brokers through the real CLI.

A federation that outgrew one broker: the root aggregator serves the root broker, a
regional aggregator (``fedface-aggregator serve --forward-to``) serves its own regional
broker and its boxes, and reaches the root's broker as a registered region
(``fedface-aggregator regions add``). Three boxes publish real CKKS updates to the
region, one box publishes directly to the root. The boxes (the test) alone hold the
federation secret key; both aggregators get the public context through ``init``.

Shown: the global result that every box decrypts equals the flat plaintext weighted
average of the four updates; forged partials (wrong key, unregistered region, a box
posing as a region) are refused by the root with their reason while it keeps serving;
a regional aggregator killed (-9) after forwarding its partial picks the root's result up
from the root broker's retained messages after a restart, without forwarding twice.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aggregator.state.presence import load_presence
from federation.crypto.ckks import CONTEXT_MAGIC, FederationContext, load_context
from federation.crypto.keys import (
    PUBLIC_CONTEXT_NAME,
    SECRET_CONTEXT_NAME,
    load_secret_context,
)
from federation.crypto.packing import StreamingSum, encrypt_update, plain_weighted_average
from tests.support.aggregator_boxes import ScriptedBox, decrypt_result
from tests.support.broker import MosquittoBroker
from tests.support.hierarchy_mqtt import (
    BrokerWatcher,
    Serve,
    connected_box,
    n_updates,
    register_box,
    run_cli,
    send_partial,
    send_update,
    status_json,
)

pytestmark = pytest.mark.mosquitto

FED = "hiermqtt"
REGION = "region-north"
LENGTH = 3000  # two ciphertexts at the default parameters
COUNT_SCALE = 64.0
CHUNK = "65536"  # several chunks per update and per partial


@dataclass
class Hierarchy:
    tmp: Path
    root_broker: MosquittoBroker
    region_broker: MosquittoBroker
    keys: Path
    secret: FederationContext
    root_state: Path
    region_state: Path
    region_boxes: list[ScriptedBox]
    direct_box: ScriptedBox
    root_watch: BrokerWatcher
    region_watch: BrokerWatcher
    procs: list[Serve] = field(default_factory=list)
    others: list[ScriptedBox] = field(default_factory=list)

    def serve_root(self, rounds: int, quorum: int = 4, deadline: float = 60.0,
                   log: str = "root.log") -> Serve:
        proc = Serve(self.tmp / log, [
            "--state", str(self.root_state), "--broker", self.root_broker.url,
            "--quorum", str(quorum), "--round-deadline", str(deadline), "--rounds",
            str(rounds), "--chunk-size", CHUNK])
        self.procs.append(proc)
        return proc

    def serve_region(self, rounds: int, log: str = "region.log") -> Serve:
        proc = Serve(self.tmp / log, [
            "--state", str(self.region_state), "--broker", self.region_broker.url,
            "--forward-to", self.root_broker.url,
            "--root-key", str(self.root_state / "aggregator.pub"), "--region-id", REGION,
            "--quorum", "3", "--round-deadline", "30", "--rounds", str(rounds),
            "--chunk-size", CHUNK])
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(f"--- {p.log.name}\n{p.text()[-2500:]}" for p in self.procs)

    def box_on(self, broker: MosquittoBroker, device_id: str, client_id: str) -> ScriptedBox:
        box = connected_box(broker.url, device_id, self.secret, FED, client_id=client_id)
        self.others.append(box)
        return box


@pytest.fixture
def hierarchy(tmp_path: Path,
              mosquitto_factory: Callable[..., MosquittoBroker]) -> Iterator[Hierarchy]:
    root_broker, region_broker = mosquitto_factory(), mosquitto_factory()
    keys = tmp_path / "keys"
    run_cli("keys", "create", "--out", str(keys))  # the commissioner's machine
    secret = load_secret_context(keys / SECRET_CONTEXT_NAME)  # the boxes' copy
    root_state, region_state = tmp_path / "root", tmp_path / "region"
    for state in (root_state, region_state):
        run_cli("init", "--fed", FED, "--state", str(state), "--public-context",
                str(keys / PUBLIC_CONTEXT_NAME), "--count-scale", str(COUNT_SCALE))
    run_cli("regions", "add", REGION, "--state", str(root_state), "--public-key",
            str(region_state / "aggregator.pub"))
    listed = run_cli("regions", "list", "--json", "--state", str(root_state))
    assert json.loads(listed) == [REGION]

    region_boxes = [connected_box(region_broker.url, f"north-box{i}", secret, FED)
                    for i in range(3)]
    for b in region_boxes:
        register_box(tmp_path, region_state, b)
    direct_box = connected_box(root_broker.url, "hq-box", secret, FED)
    register_box(tmp_path, root_state, direct_box)
    h = Hierarchy(tmp_path, root_broker, region_broker, keys, secret, root_state,
                  region_state, region_boxes, direct_box,
                  BrokerWatcher(root_broker.url, "watch-root", FED),
                  BrokerWatcher(region_broker.url, "watch-region", FED))
    yield h
    for proc in h.procs:
        proc.stop(kill=True)
    for b in [*region_boxes, direct_box, *h.others]:
        b.transport.close()
    h.root_watch.close()
    h.region_watch.close()


def _vectors(seed: int, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 0.4, LENGTH).astype(np.float32) for _ in range(n)]


def _region_boxes_send_round_two(h: Hierarchy, vecs: list[np.ndarray], counts: list[int]
                                 ) -> dict[str, Any]:
    """Once the region opens round 2, both levels build on round-1 and each region box
    sends its update; the root's announce (for the direct box)."""
    h.region_watch.wait("region round 2 open", h.region_watch.open_round(2), 30, h.logs)
    region_ann, root_ann = h.region_watch.announce(), h.root_watch.announce()
    assert region_ann is not None and root_ann is not None
    assert region_ann["base_model"] == "round-1" and root_ann["base_model"] == "round-1"
    for box, v, n in zip(h.region_boxes, vecs, counts, strict=True):
        send_update(box, region_ann, v, n)
    return root_ann


def _accepted(h: Hierarchy, box: ScriptedBox, n: int) -> None:
    acks = box.wait_acks(n, 30)
    assert len(acks) >= n and acks[n - 1]["accepted"], f"{box.device_id}: {acks}\n{h.logs()}"


def _assert_public_only(state: Path, keys: Path) -> None:
    """Every CKKS context in the aggregator's state is public; its copy is the public file."""
    contexts = []
    for path in state.rglob("*"):
        if path.is_file() and path.read_bytes()[:4] == CONTEXT_MAGIC:
            ctx = load_context(path.read_bytes())
            assert not ctx.is_private, f"{path} holds the federation secret key"
            contexts.append(path.name)
    assert contexts == [PUBLIC_CONTEXT_NAME]
    assert (state / PUBLIC_CONTEXT_NAME).read_bytes() == (keys / PUBLIC_CONTEXT_NAME).read_bytes()
    secret = (keys / SECRET_CONTEXT_NAME).read_bytes()
    assert not any(p.is_file() and p.read_bytes() == secret for p in state.rglob("*"))


def test_region_and_root_processes_over_two_brokers_equal_flat_average(
    hierarchy: Hierarchy,
) -> None:
    h = hierarchy
    started = time.monotonic()
    root = h.serve_root(rounds=2)
    region = h.serve_region(rounds=2)
    h.root_watch.wait("root round 1 open", h.root_watch.open_round(1), 30, h.logs)
    h.region_watch.wait("region round 1 open", h.region_watch.open_round(1), 30, h.logs)
    public = h.secret.public()

    # --- forged partials at the root broker, before any genuine contribution ----------
    summed = StreamingSum(public, LENGTH)
    for v in _vectors(99, 2):
        summed.add(encrypt_update(h.secret, v, 500, COUNT_SCALE))
    forged_blob = summed.result().to_bytes()  # a real partial claiming 2 updates
    impostor = h.box_on(h.root_broker, REGION, "impostor")  # region id, a fresh wrong key
    rogue = h.box_on(h.root_broker, "region-rogue", "rogue")  # never registered
    send_partial(impostor, forged_blob, 1, "base")
    send_partial(rogue, forged_blob, 1, "base")
    send_partial(h.direct_box, forged_blob, 1, "base")  # registered box, not a region
    refusals = {"box": h.direct_box.wait_acks(1, 30)[0]}
    # the impostor's partial is refused (counted as bad_signature below) but never
    # answered: an unauthenticated message gets no reply in the region's name; nor is
    # the rogue's, from an id never registered (counted as unknown_device below; its
    # chunks went in before the box's, so an answer would have been sent by now)
    assert impostor.acks == [], impostor.acks
    assert rogue.acks == [], rogue.acks
    assert not any(a["accepted"] for a in refusals.values()), refusals
    assert refusals["box"]["reason"] == "malformed", refusals
    assert "not a registered regional aggregator" in refusals["box"]["detail"]
    assert refusals["box"]["contributions"] == 0  # nothing was counted

    # --- round 1: three boxes through the region, one box directly at the root ---------
    vecs, counts = _vectors(1, 4), [150, 240, 330, 420]
    region_ann = h.region_watch.announce()
    root_ann = h.root_watch.announce()
    assert region_ann is not None and root_ann is not None
    send_update(h.direct_box, root_ann, vecs[3], counts[3])
    _accepted(h, h.direct_box, 2)
    for box, v, n in zip(h.region_boxes, vecs[:3], counts[:3], strict=True):
        send_update(box, region_ann, v, n)
    for box in h.region_boxes:
        _accepted(h, box, 1)
    h.root_watch.wait("root result 1", h.root_watch.result_of(1), 60, h.logs)
    h.region_watch.wait("region result 1", h.region_watch.result_of(1), 60, h.logs)
    root_pointer, root_blob = h.root_watch.result()
    region_pointer, region_blob = h.region_watch.result()
    assert root_pointer["contributors"] == 2  # the region (its partial) and hq-box
    assert n_updates(root_blob, public) == 4  # ... summing four box updates
    assert region_blob == root_blob  # the region publishes the root's (global) sum
    assert region_pointer["contributors"] == 3  # its own round had its three boxes
    expected = plain_weighted_average(vecs, counts)
    flat = StreamingSum(public, LENGTH)
    for v, n in zip(vecs, counts, strict=True):
        flat.add(encrypt_update(h.secret, v, n, COUNT_SCALE))
    flat_avg = decrypt_result(h.secret, flat.result().to_bytes())
    got = decrypt_result(h.secret, region_blob)
    err_plain = float(np.max(np.abs(got - expected)))
    err_flat = float(np.max(np.abs(got - flat_avg)))
    print(f"round 1: max |hierarchy - plaintext| {err_plain:.2e}, "
          f"max |hierarchy - flat encrypted| {err_flat:.2e}")
    assert err_plain < 1e-5 and err_flat < 1e-5
    north_acks = [a for a in h.root_watch.acks_of(REGION) if a["round"] == 1]
    assert [a["reason"] for a in north_acks] == [None], north_acks
    assert north_acks[0]["accepted"]

    # --- round 2: the region dies (-9) after forwarding, before the root's result ------
    h.root_watch.wait("root round 2 open", h.root_watch.open_round(2), 30, h.logs)
    vecs2, counts2 = _vectors(2, 4), [200, 100, 300, 250]
    root_ann = _region_boxes_send_round_two(h, vecs2[:3], counts2[:3])
    for box in h.region_boxes:
        _accepted(h, box, 2)
    h.root_watch.wait("the region's round-2 partial accepted at the root", lambda: any(
        a["round"] == 2 and a["accepted"] for a in h.root_watch.acks.get(REGION, [])), 60,
        h.logs)
    region.stop(kill=True)
    # its status says what it waits for (it said "open round: none": helper-41)
    said = run_cli("status", "--no-broker", "--state", str(h.region_state))
    assert "its result not published yet: waiting for the root's result of its round 2" \
        in said, said
    send_update(h.direct_box, root_ann, vecs2[3], counts2[3])
    _accepted(h, h.direct_box, 3)
    h.root_watch.wait("root result 2", h.root_watch.result_of(2), 60, h.logs)
    assert root.wait_exit(30) == 0, h.logs()
    # the root is gone; its result is retained on its broker: the restarted region
    # resumes its closed round 2 and publishes that result without sending again
    restarted = h.serve_region(rounds=1, log="region-restarted.log")
    h.region_watch.wait("region result 2 after restart", h.region_watch.result_of(2), 60,
                        h.logs)
    assert restarted.wait_exit(30) == 0, h.logs()
    _, root_blob2 = h.root_watch.result()
    _, region_blob2 = h.region_watch.result()
    assert region_blob2 == root_blob2 and n_updates(root_blob2, public) == 4
    got2 = decrypt_result(h.secret, region_blob2)
    err2 = float(np.max(np.abs(got2 - plain_weighted_average(vecs2, counts2))))
    print(f"round 2 (region restarted): max |hierarchy - plaintext| {err2:.2e}")
    assert err2 < 1e-5
    # the partial was sent once (the root's round 2 had closed: no resend after restart)
    assert "partial sum (" not in restarted.text()
    assert "sending it again" not in restarted.text()
    round2_acks = [a for a in h.root_watch.acks_of(REGION) if a["round"] == 2]
    assert [a["accepted"] for a in round2_acks] == [True], round2_acks

    # --- the root kept serving and counted every refusal; nobody held the secret key --
    status = status_json(h.root_state)
    counters = status["counters"]
    assert counters.get("rejected.bad_signature", 0) >= 1, counters  # once per chunk
    assert counters.get("rejected.unknown_device", 0) >= 1, counters  # once per chunk
    assert counters.get("rejected.malformed") == 1, counters
    # updates, not messages: the region's partial of 3 and the direct box (it said 2, below
    # the quorum 4 the rounds had met)
    assert [r["updates"] for r in status["recent_results"]] == [4, 4]
    # the region keeps a status on the root's broker like a box: the root heard it online
    # and then its will when it was killed (its model: the root's, not a region's own)
    with closing(sqlite3.connect(h.root_state / "state.db")) as db:
        seen = load_presence(db)[REGION]
    assert seen.offline_since is not None and seen.model == "round-1", seen
    # the region's versions name the root's (the same results, each level's numbers)
    listed = json.loads(run_cli("models", "list", "--state", str(h.region_state), "--json"))
    assert [(m["model"], m["root_model"]) for m in listed] == [
        ("round-1", "round-1"), ("round-2", "round-2")], listed
    assert "= root round-2" in run_cli("models", "list", "--state", str(h.region_state))
    # a region holds no secret key: a rotation's recipients at the root do not ask to
    # re-provision it (they said so: helper-43)
    said = run_cli("devices", "recipients", "--state", str(h.root_state), "--out",
                   str(h.tmp / "recipients.json"))
    assert REGION not in said, said
    for state in (h.root_state, h.region_state):
        _assert_public_only(state, h.keys)
    print(f"hierarchy over two brokers, two rounds: {time.monotonic() - started:.1f} s")


def test_late_region_catches_up_on_the_roots_result_and_joins_its_next_round(
    hierarchy: Hierarchy,
) -> None:
    """The root closes round 1 at its deadline without the region (quorum 1: the direct
    box) and is restarted with new settings; the region's round 1, open on the model the
    root has moved past, closes at once on the root's round-1 result (before, it waited
    for its boxes' updates, of the stale base and never forwarded), and its round 2 (on
    that result) is counted in the root's round 2."""
    h = hierarchy
    started = time.monotonic()
    first_root = h.serve_root(rounds=1, quorum=1, deadline=2.0)
    region = h.serve_region(rounds=2)
    h.root_watch.wait("root round 1 open", h.root_watch.open_round(1), 30, h.logs)
    h.region_watch.wait("region round 1 open", h.region_watch.open_round(1), 30, h.logs)
    root_ann = h.root_watch.announce()
    assert root_ann is not None
    hq1 = _vectors(3, 1)[0]
    send_update(h.direct_box, root_ann, hq1, 300)
    _accepted(h, h.direct_box, 1)
    h.root_watch.wait("root result 1 (deadline, quorum 1)", h.root_watch.result_of(1), 30,
                      h.logs)
    assert first_root.wait_exit(30) == 0, h.logs()
    assert "deadline with quorum (1 update(s), quorum 1)" in first_root.text()
    h.serve_root(rounds=1, log="root-restarted.log")  # quorum 4 from now on
    h.root_watch.wait("root round 2 open", h.root_watch.open_round(2), 30, h.logs)

    # the region's round 1, on the base the root has moved past, follows the root's
    h.region_watch.wait("region result 1", h.region_watch.result_of(1), 30, h.logs)
    _, root_blob1 = h.root_watch.result()
    region_pointer, region_blob1 = h.region_watch.result()
    assert region_blob1 == root_blob1 and n_updates(region_blob1, h.secret.public()) == 1
    assert region_pointer["contributors"] == 0
    got1 = decrypt_result(h.secret, region_blob1)
    assert np.max(np.abs(got1 - hq1)) < 1e-5  # the root's round 1: the direct box alone
    assert "the root's current model is its round-1" in region.text(), region.text()

    # round 2: the region's boxes build on the root's result and are counted at the root
    vecs, counts = _vectors(5, 4), [120, 80, 200, 160]
    root_ann = _region_boxes_send_round_two(h, vecs[:3], counts[:3])
    send_update(h.direct_box, root_ann, vecs[3], counts[3])
    _accepted(h, h.direct_box, 2)
    h.region_watch.wait("region result 2", h.region_watch.result_of(2), 60, h.logs)
    assert region.wait_exit(30) == 0, h.logs()
    _, root_blob2 = h.root_watch.result()
    _, region_blob2 = h.region_watch.result()
    assert region_blob2 == root_blob2 and n_updates(root_blob2, h.secret.public()) == 4
    err = float(np.max(np.abs(decrypt_result(h.secret, region_blob2)
                              - plain_weighted_average(vecs, counts))))
    print(f"late region, round 2: max |hierarchy - plaintext| {err:.2e}; "
          f"{time.monotonic() - started:.1f} s")
    assert err < 1e-5
