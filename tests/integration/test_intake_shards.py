"""`serve --intake-processes 2` as a real process against a real Mosquitto: each shard
hears its own devices, multi-chunk updates are reassembled there, every box gets one
ack per update, a revoked device is still answered, a shard killed with SIGKILL is
restarted and its devices' next updates arrive through its persistent session, and the
result equals the plaintext weighted average. Plus the pure parts: the device split and
the retiring of a former layout's broker sessions."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from aggregator.intake.shards import (
    SESSIONS_FILE,
    IntakeShards,
    ShardSpec,
    retire_stale_sessions,
    session_ids,
    shard_of,
)
from aggregator.state.config import PUB_NAME, init_state
from aggregator.state.registry import DeviceRegistry
from aggregator.state.store import Store
from federation import topics
from federation.crypto.ckks import FederationContext, new_secret_context
from federation.crypto.keys import read_public_key, save_public_context
from federation.crypto.packing import plain_weighted_average
from federation.crypto.signing import verify
from federation.envelope import decode
from federation.transport.mqtt import MqttTransport
from tests.support.aggregator_boxes import (
    ScriptedBox,
    collect_result,
    decrypt_result,
    envelope_json,
)
from tests.support.aggregator_mqtt import RetainedWatcher
from tests.support.broker import MosquittoBroker

FED = "fedmqtt"  # RetainedWatcher's federation
LENGTH = 3000  # two ciphertexts, ~100 kB: two 64 KiB chunks per update
CHUNK = 65536
COUNT_SCALE = 64.0
AGGREGATOR_ID = "agg-eu-1"  # not the default: the shards must sign acks under the config's id
REPO = Path(__file__).resolve().parents[2]


def test_devices_split_stably_and_evenly() -> None:
    ids = [f"branch-{i:04d}" for i in range(3000)]
    shares = Counter(shard_of(d, 3) for d in ids)
    assert set(shares) == {0, 1, 2}
    assert all(800 <= n <= 1200 for n in shares.values()), shares
    assert [shard_of(d, 3) for d in ids[:50]] == [shard_of(d, 3) for d in ids[:50]]
    assert {shard_of(d, 1) for d in ids} == {0}


def test_a_new_layout_ends_the_former_shards_sessions(tmp_path: Path) -> None:
    ended: list[str] = []
    two = session_ids("aggregator-f", 2)
    assert two == ["aggregator-f-intake-0of2", "aggregator-f-intake-1of2"]
    retire_stale_sessions(tmp_path, two, ended.append)  # first run: nothing to end
    assert ended == []
    assert json.loads((tmp_path / SESSIONS_FILE).read_text())["client_ids"] == two
    retire_stale_sessions(tmp_path, two, ended.append)  # same layout: sessions kept
    assert ended == []
    retire_stale_sessions(tmp_path, session_ids("aggregator-f", 1), ended.append)  # back to 1
    assert ended == two
    assert json.loads((tmp_path / SESSIONS_FILE).read_text())["client_ids"] == []
    (tmp_path / SESSIONS_FILE).write_text("{not json")  # damaged: warned, not fatal
    retire_stale_sessions(tmp_path, two, ended.append)
    assert ended == two


def _shard_pids(log: Path, timeout: float = 60.0) -> dict[int, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = {int(m[1]): int(m[2]) for m in re.finditer(
            r"intake shard (\d) of 2 \(pid (\d+)\)", log.read_text())}
        if len(found) == 2:
            return found
        time.sleep(0.1)
    raise AssertionError(f"shards did not start:\n{log.read_text()[-3000:]}")


def _federation(tmp_path: Path, url: str, ids: list[str], revoked: list[str]
                ) -> tuple[FederationContext, Path, list[ScriptedBox]]:
    secret = new_secret_context()
    pub = save_public_context(tmp_path / "federation-public.tenseal", secret)
    state = tmp_path / "state"
    init_state(state, FED, pub, count_scale=COUNT_SCALE, aggregator_id=AGGREGATOR_ID)
    boxes = [ScriptedBox(d, FED, secret, MqttTransport(url, d, clean_start=True)) for d in ids]
    store = Store(state)
    for box in boxes:
        DeviceRegistry(store).add(box.device_id, bytes.fromhex(box.public_hex))
        assert box.transport.wait_connected(10)
    for device in revoked:
        DeviceRegistry(store).revoke(device)
    store.close()
    return secret, state, boxes


def serve_aggregator(state: Path, url: str, log: Path, *args: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "aggregator.cli", "serve", "--state", str(state), "--broker",
             url, "--chunk-size", str(CHUNK), "--intake-processes", "2",
             "--min-new-samples", "0", *args],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.mark.mosquitto
def test_two_intake_processes_run_rounds_and_survive_a_killed_shard(
    tmp_path: Path, mosquitto: MosquittoBroker,
) -> None:
    ids = [f"box{i}" for i in range(6)]
    assert {shard_of(d, 2) for d in ids} == {0, 1}  # both shards have devices
    secret, state, boxes = _federation(tmp_path, mosquitto.url, [*ids, "gone"], ["gone"])
    *live, revoked = boxes
    watcher = RetainedWatcher(mosquitto.url, "watcher")
    log = tmp_path / "serve.log"
    agg = serve_aggregator(state, mosquitto.url, log, "--round-deadline", "120",
                 "--quorum", str(len(live)), "--rounds", "2")
    try:
        rng = np.random.default_rng(11)
        for round_no in (1, 2):
            msgs = watcher.wait_for(partial(_is_round, _open_round, round_no), 90)
            ann = envelope_json(msgs[topics.announce(FED)])[1]
            if round_no == 2:  # a shard dies between rounds; its devices' uploads wait
                killed = _shard_pids(log)[0]  # at the broker until it is back
                os.kill(killed, signal.SIGKILL)
            vecs = [rng.normal(0, 0.4, LENGTH).astype(np.float32) for _ in live]
            counts = [100 + 40 * i for i in range(len(live))]
            for box, vec, n in zip(live, vecs, counts, strict=True):
                blob = box.encrypted_blob(vec, n, COUNT_SCALE)
                envs = box.envelopes(blob, ann["round"], ann["base_model"], chunk_size=CHUNK)
                assert len(envs) == 2
                box.send(envs)
            if round_no == 1:
                blob = revoked.encrypted_blob(vecs[0], 50, COUNT_SCALE)
                revoked.send(revoked.envelopes(blob, 1, ann["base_model"], chunk_size=CHUNK))
                # refused, and told it was revoked (serve's signed notice: helper-60),
                # in either order (a shard answers the update, serve sends the notice)
                answer = revoked.wait_acks(2, 30)
                assert sorted(a["reason"] for a in answer) == ["revoked",
                                                               "unknown_device"], answer
            for box in live:
                acks = box.wait_acks(round_no, 60)
                assert [a["accepted"] for a in acks] == [True] * round_no, (box.device_id, acks)
            msgs = watcher.wait_for(partial(_is_round, _result_round, round_no), 60)
            pointer, blob = collect_result(msgs, FED)
            assert pointer["contributors"] == len(live)
            got = decrypt_result(secret, blob)
            assert np.max(np.abs(got - plain_weighted_average(vecs, counts))) < 1e-5
        agg.wait(60)
        text = log.read_text()
        assert agg.returncode == 0, text[-3000:]
        assert "intake shard 0 exited" in text and "starting a new one" in text
        assert _shard_pids(log)[0] != killed  # the restarted shard logged its new pid
        for box in live:  # exactly one ack per update, none doubled by the shard restart
            assert len(box.acks) == 2, (box.device_id, box.acks)
        # the shards sign the acks: with the aggregator's key, under the config's id
        aggregator_key = read_public_key(state / PUB_NAME)
        for box in live:
            ack = decode(watcher.messages[topics.ack(FED, box.device_id)])
            assert ack.sender == AGGREGATOR_ID
            verify(aggregator_key, ack.signing_bytes(), ack.sig)
        assert json.loads((state / SESSIONS_FILE).read_text())["client_ids"] == session_ids(
            "aggregator-" + FED, 2)
    finally:
        if agg.poll() is None:
            agg.kill()
            agg.wait()
        watcher.close()
        for box in boxes:
            box.transport.close()


@pytest.mark.mosquitto
def test_shards_answer_bad_input_and_report_a_flood_once(
    tmp_path: Path, mosquitto: MosquittoBroker,
) -> None:
    """Garbage is answered ``malformed`` by the shard that heard it; a flood past the
    per-device limit is dropped in the shard and reported to the service, which answers
    ``rate_limited`` once and counts it, while an honest box of the other shard gets in."""
    assert shard_of("flood", 2) != shard_of("steady", 2)  # one per shard
    _, state, (flood, honest) = _federation(tmp_path, mosquitto.url,
                                                 ["flood", "steady"], [])
    watcher = RetainedWatcher(mosquitto.url, "watcher")
    log = tmp_path / "serve.log"
    # The flood never sends an update: the round closes at its deadline with quorum 1.
    agg = serve_aggregator(state, mosquitto.url, log, "--round-deadline", "6", "--quorum", "1",
                 "--rounds", "1", "--rate-limit-msgs", "1", "--rate-limit-mib", "16")
    try:
        msgs = watcher.wait_for(partial(_is_round, _open_round, 1), 90)
        ann = envelope_json(msgs[topics.announce(FED)])[1]
        for _ in range(30):  # burst allowance: 10 messages; the rest are dropped
            flood.send_raw(b"not an envelope")
        with flood.ack_event:
            assert flood.ack_event.wait_for(
                lambda: any(a["reason"] == "rate_limited" for a in flood.acks), 30), Counter(
                    a["reason"] for a in flood.acks)
        time.sleep(1.5)  # a second report period: the flood is still answered only once
        reasons = Counter(a["reason"] for a in flood.acks)
        assert reasons["malformed"] == 10 and reasons["rate_limited"] == 1, reasons
        blob = honest.encrypted_blob(np.ones(LENGTH, np.float32), 80, COUNT_SCALE)
        honest.send(honest.envelopes(blob, ann["round"], ann["base_model"], chunk_size=CHUNK))
        assert [a["accepted"] for a in honest.wait_acks(1, 30)] == [True]
        agg.wait(60)
        assert agg.returncode == 0, log.read_text()[-3000:]
        store = Store(state)
        try:
            counters = store.counters()
        finally:
            store.close()
        assert counters["rejected.rate_limited"] == 1, counters
        assert counters["rate_limited.messages"] == 20, counters
    finally:
        if agg.poll() is None:
            agg.kill()
            agg.wait()
        watcher.close()
        for box in (flood, honest):
            box.transport.close()


def _is_round(which: Callable[[dict[str, bytes]], int | None], round_no: int,
              msgs: dict[str, bytes]) -> bool:
    return which(msgs) == round_no


def _open_round(msgs: dict[str, bytes]) -> int | None:
    raw = msgs.get(topics.announce(FED))
    if raw is None:
        return None
    body = envelope_json(raw)[1]
    return int(body["round"]) if body["state"] == "open" else None


def _result_round(msgs: dict[str, bytes]) -> int | None:
    raw = msgs.get(topics.model_latest(FED))
    if raw is None:
        return None
    _, pointer = envelope_json(raw)
    if not all(topics.result(FED, pointer["round"], i) in msgs
               for i in range(pointer["chunks"])):
        return None
    return int(pointer["round"])


def _wait_all_down(shards: IntakeShards, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while any(shards.running()):
        assert time.monotonic() < deadline, "the shards did not die"
        time.sleep(0.05)


def test_a_shard_that_cannot_start_is_reported_and_restarted_with_backoff(
        tmp_path: Path) -> None:
    """A shard that dies at once (here: its signing key file is missing) makes ``start``
    report failure (the service then receives updates itself), and ``restart_dead``
    starts it again only after a growing delay, not on every pump."""
    state = tmp_path / "state"
    state.mkdir()
    sqlite3.connect(state / "state.db").close()
    shards = IntakeShards(ShardSpec(
        0, 2, state, FED, "mqtt://127.0.0.1:9", "agg", None, "5", max_blob_bytes=2**20,
        max_spool_bytes=2**24, signing_key_file=tmp_path / "missing.key"))
    try:
        assert shards.start(lambda item: None, None) is False
        _wait_all_down(shards)
        first = shards.pids()
        time.sleep(0.6)  # past the first delay (0.5 s after their start)
        shards.restart_dead()
        second = shards.pids()
        assert set(second).isdisjoint(first)
        restarted = time.monotonic()
        _wait_all_down(shards)  # they die again: the next delay is 1 s from their start
        shards.restart_dead()
        if time.monotonic() - restarted < 0.9:  # (unless dying took that long here)
            assert shards.pids() == second
        time.sleep(1.1)
        shards.restart_dead()
        assert set(shards.pids()).isdisjoint(second)
    finally:
        shards.close()
