"""`fedface-aggregator models pin|rollback|unpin` against a real service (in-memory bus,
real CKKS updates from scripted boxes): what the CLI says and stores, what the next
announce says, and which result the broker retains for boxes to fetch."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from aggregator.cli.main import app
from aggregator.rounds.coordinator import RoundSettings
from aggregator.service import AggregatorService
from aggregator.state.store import Store
from federation import topics
from federation.crypto.ckks import FederationContext
from federation.crypto.keys import create_federation_keys, load_secret_context
from federation.crypto.signing import generate_signing_key
from federation.transport.base import InMemoryBus, InMemoryTransport
from tests.support.aggregator_boxes import (
    ScriptedBox,
    collect_result,
    decrypt_result,
    latest_announce,
)
from tests.support.aggregator_rig import registered_boxes

FED = "pinfed"
LENGTH = 600
runner = CliRunner()


@dataclass
class Rig:
    state: Path
    bus: InMemoryBus
    store: Store
    service: AggregatorService
    boxes: list[ScriptedBox]
    secret: FederationContext

    def cli(self, *args: str) -> tuple[int, str]:
        r = runner.invoke(app, [*args, "--state", str(self.state)])
        return r.exit_code, r.output

    def models(self) -> list[dict]:
        code, out = self.cli("models", "list", "--json")
        assert code == 0, out
        rows: list[dict] = json.loads(out)
        return rows

    def run_round(self, seed: int, model: str | None = None) -> tuple[dict, np.ndarray]:
        """Every box sends an update for the announced round; returns (announce,
        decrypted result)."""
        ann = latest_announce(self.bus.retained, FED)
        rng = np.random.default_rng(seed)
        for box in self.boxes:
            vec = rng.normal(0, 0.3, LENGTH).astype(np.float32)
            blob = box.encrypted_blob(vec, 100, ann["count_scale"])
            box.send(box.envelopes(blob, ann["round"], model or ann["base_model"]))
            self.service.pump()
            assert box.acks[-1]["accepted"], box.acks[-1]
        row = self.store.get_round(ann["round"])
        assert row is not None and row.status == "published" and row.sum_blob
        return ann, decrypt_result(self.secret, self.store.read_blob(row.sum_blob))


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    keys = create_federation_keys(tmp_path / "keys")
    state = tmp_path / "state"
    r = runner.invoke(app, ["init", "--fed", FED, "--state", str(state), "--public-context",
                            str(keys.public_context)])
    assert r.exit_code == 0, r.output
    secret = load_secret_context(keys.secret_context)
    bus = InMemoryBus(synchronous=True)
    store = Store(state)
    boxes = registered_boxes(bus, store, secret, 2, fed=FED)
    service = AggregatorService(
        InMemoryTransport(bus, "aggregator"), store, secret.public(), generate_signing_key(),
        FED, settings=RoundSettings(deadline_seconds=60, quorum=2, count_scale=64))
    service.start()
    yield Rig(state, bus, store, service, boxes, secret)
    store.close()


def retained_result_rounds(bus: InMemoryBus) -> set[int]:
    base = topics.prefix(FED) + "/result/"
    return {int(t[len(base):].split("/")[0]) for t, p in bus.retained.items()
            if t.startswith(base) and p}


def test_pin_rollback_unpin_and_what_boxes_are_told(rig: Rig) -> None:
    results = {}
    for seed in (1, 2, 3):
        ann, avg = rig.run_round(seed)
        results[f"round-{ann['round']}"] = avg
        assert ann["pinned"] is False
    rows = rig.models()
    assert [r["model"] for r in rows] == ["round-1", "round-2", "round-3"]
    assert [r["next_base"] for r in rows] == [False, False, True]
    assert not any(r["pinned"] for r in rows)

    code, out = rig.cli("models", "pin", "round-9")
    assert code == 2 and out.count("\n") == 1
    assert "not a published model version" in out and "round-1, round-2, round-3" in out

    code, out = rig.cli("models", "pin", "round-1")
    assert code == 0, out
    # round 4 is open (the service opened it after round 3): said as such
    assert "round 4, open now, finishes on its base; the next round builds on round-1" in out
    assert [(r["model"], r["pinned"], r["next_base"]) for r in rig.models()] == [
        ("round-1", True, True), ("round-2", False, False), ("round-3", False, False)]
    # round 4 was open when the pin was set: it finishes on round-3 ...
    ann4, results["round-4"] = rig.run_round(4)
    assert ann4["base_model"] == "round-3"
    # ... and round 5 builds on the pinned round-1, not on round-4
    ann5 = latest_announce(rig.bus.retained, FED)
    assert (ann5["round"], ann5["base_model"], ann5["pinned"]) == (5, "round-1", True)
    pointer, blob = collect_result(rig.bus.retained, FED)
    assert (pointer["model"], pointer["round"], pointer["republished"]) == ("round-1", 1, True)
    assert pointer["for_round"] == 5
    assert retained_result_rounds(rig.bus) == {1}  # round 4's chunks were cleared
    np.testing.assert_array_equal(decrypt_result(rig.secret, blob), results["round-1"])
    first_msg = rig.store.get_round(1).result_msg  # type: ignore[union-attr]
    assert pointer["msg"] != first_msg  # boxes that assembled it once fetch it again

    # an update trained on the latest result is stale now; one on round-1 counts
    rig.boxes[0].send(rig.boxes[0].envelopes(
        rig.boxes[0].encrypted_blob(np.zeros(LENGTH, np.float32), 10, 64), 5, "round-4"))
    rig.service.pump()
    assert rig.boxes[0].acks[-1]["reason"] == "stale_version"
    ann, results["round-5"] = rig.run_round(5)
    assert ann["base_model"] == "round-1"
    # the chain continues from the pin: round 6 builds on round-5
    ann6 = latest_announce(rig.bus.retained, FED)
    assert (ann6["base_model"], ann6["pinned"]) == ("round-5", False)
    # status says so, not "round-5 (PINNED...)" beside a pin of another version (a
    # walkthrough found that confusing)
    code, out = rig.cli("status", "--no-broker")
    assert "next round builds on: round-5 (the line of rounds since round-1 was pinned" \
        in out, out
    assert collect_result(rig.bus.retained, FED)[0]["model"] == "round-5"

    # rollback undoes the current base: round-5 was built on round-1
    code, out = rig.cli("models", "rollback")
    assert code == 0 and "rolled back from round-5: pinned round-1" in out, out
    rig.run_round(6)  # round 6, open during the rollback, still on round-5
    ann7 = latest_announce(rig.bus.retained, FED)
    assert (ann7["round"], ann7["base_model"], ann7["pinned"]) == (7, "round-1", True)
    assert collect_result(rig.bus.retained, FED)[0]["model"] == "round-1"

    code, out = rig.cli("models", "unpin")
    assert code == 0 and "unpinned round-1; the next round builds on round-6" in out, out
    rig.run_round(7)
    ann8 = latest_announce(rig.bus.retained, FED)
    assert (ann8["base_model"], ann8["pinned"]) == ("round-7", False)
    code, out = rig.cli("status", "--no-broker", "--json")
    info = json.loads(out)
    assert info["next_base"] == "round-7" and info["pinned"] is None


def test_rollback_to_the_initial_model_refusals_and_unpin_without_pin(rig: Rig) -> None:
    code, out = rig.cli("models", "rollback")
    assert code == 2 and "builds on the initial model base already: nothing to roll" in out
    code, out = rig.cli("models", "list")
    assert code == 0 and "next round builds on base" in out
    code, out = rig.cli("models", "unpin")
    assert code == 0 and "nothing was pinned; the next round builds on base" in out
    rig.run_round(1)
    # round-1 was built on the initial model: rolling back pins it (it was refused: "the
    # initial model cannot be pinned", no way back to the model every box holds)
    code, out = rig.cli("models", "rollback")
    assert code == 0 and "rolled back from round-1: pinned base; round 2, open now" in out
    rig.run_round(2)  # open during the rollback: on round-1
    ann3 = latest_announce(rig.bus.retained, FED)
    assert (ann3["round"], ann3["base_model"], ann3["pinned"]) == (3, "base", True)
    # no result is retained: a box starting now must not fetch round-2 and serve it
    assert topics.model_latest(FED) not in rig.bus.retained
    rig.run_round(3)
    # the initial model has a row of its own, marked pinned (helper-57: it was only in
    # round 1's BASE column); round 3, built on it, is the next base
    code, out = rig.cli("models", "list")
    rows = out.splitlines()
    assert code == 0 and rows[1].split()[:2] == ["base", "-"], out
    assert rows[1].endswith("initial model PINNED") and rows[-1].endswith("next-base"), out
    code, out = rig.cli("models", "unpin")  # round-3, opened after the pin, leads anyway
    assert code == 0 and "unpinned base; the next round builds on round-3" in out
    code, out = rig.cli("models", "pin", "base")
    assert code == 0 and "pinned base (the pretrained model every box holds)" in out
    # nothing is re-published for it (the message said so: helper-43)
    assert "no result to fetch" in out and "re-published" not in out, out
    rig.run_round(4)  # open when pinned
    assert latest_announce(rig.bus.retained, FED)["base_model"] == "base"
    assert rig.cli("models", "unpin")[0] == 0
    # a pin whose result blob is gone is refused (boxes could never fetch it)
    rig.run_round(2)
    rig.store.blob_path("round-1-result.bin").unlink()
    code, out = rig.cli("models", "pin", "round-1")
    assert code == 2 and "no longer on disk" in out


def test_a_version_of_an_earlier_key_epoch_cannot_be_pinned(rig: Rig) -> None:
    """After a rotation no box can decrypt the old epoch's results: pinning one stalled
    the federation (every box refused it as wrong_key and sat the rounds out, silently;
    seen in a walkthrough). The pin is refused, saying why; rollback too."""
    rig.run_round(1)
    rig.run_round(2)
    config = rig.state / "config.json"
    settings = json.loads(config.read_text())
    old_key, settings["key_id"] = settings["key_id"], "f" * 64  # what `keys install` writes
    config.write_text(json.dumps(settings))
    code, out = rig.cli("models", "pin", "round-1")
    assert code == 2 and "an earlier key epoch" in out and old_key[:12] in out, out
    code, out = rig.cli("models", "rollback")
    assert code == 2 and "an earlier key epoch" in out, out
    code, out = rig.cli("models", "list", "--json")
    assert code == 0 and not any(r["pinned"] for r in json.loads(out))
    # the list says which versions are of the earlier key (nothing did)
    assert [r["earlier_key"] for r in json.loads(out)] == [True, True]
    assert rig.cli("models", "list")[1].count("earlier-key") == 2


def test_pin_survives_a_restart_and_republishes_the_base(rig: Rig) -> None:
    for seed in (1, 2):
        rig.run_round(seed)
    assert rig.cli("models", "pin", "round-1")[0] == 0
    rig.run_round(3)  # round 3 was open: on round-2
    # the restart resumes open round 4 on the pinned base and re-announces it
    rig.store.close()
    rig.store = Store(rig.state)
    rig.service = AggregatorService(
        InMemoryTransport(rig.bus, "aggregator"), rig.store, rig.secret.public(),
        generate_signing_key(), FED,
        settings=RoundSettings(deadline_seconds=60, quorum=2, count_scale=64))
    rig.bus.retained.pop(topics.model_latest(FED))  # e.g. a broker that lost its store
    for index in range(rig.store.get_round(1).result_chunks or 0):  # type: ignore[union-attr]
        rig.bus.retained.pop(topics.result(FED, 1, index), None)
    rig.store.set_meta("retained_result_round", "3")
    rig.service.start()
    ann = latest_announce(rig.bus.retained, FED)
    assert (ann["round"], ann["base_model"], ann["pinned"]) == (4, "round-1", True)
    assert collect_result(rig.bus.retained, FED)[0]["model"] == "round-1"
