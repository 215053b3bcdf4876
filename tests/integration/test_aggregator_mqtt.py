"""`fedface-aggregator serve` as a real process against a real Mosquitto: kill -9 mid-round
and restart, and a silent box with the round closing at its deadline."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from federation.crypto.ckks import FederationContext
from federation.crypto.packing import plain_weighted_average
from tests.support.aggregator_boxes import ScriptedBox, decrypt_result
from tests.support.aggregator_mqtt import (
    LENGTH,
    RetainedWatcher,
    announce_open,
    read_result,
    result_complete,
    send_update,
    serve_aggregator,
    setup_federation,
)
from tests.support.broker import MosquittoBroker

pytestmark = pytest.mark.mosquitto


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait()


@contextmanager
def _federation(tmp_path: Path, url: str, secret_ctx: FederationContext, n_boxes: int
                ) -> Iterator[tuple[Path, list[ScriptedBox], RetainedWatcher]]:
    """The aggregator's state with ``n_boxes`` registered boxes and a retained-message
    watcher, all connected to ``url``; their connections closed on leaving, pass or fail."""
    state, boxes = setup_federation(tmp_path, secret_ctx, url, n_boxes)
    watcher = RetainedWatcher(url, "watcher")
    try:
        yield state, boxes, watcher
    finally:
        watcher.close()
        for box in boxes:
            box.transport.close()


def _vectors(seed: int, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 0.4, LENGTH).astype(np.float32) for _ in range(n)]


def _open_round(state: Path, url: str, watcher: RetainedWatcher,
                procs: list[subprocess.Popen[bytes]], *options: str
                ) -> tuple[subprocess.Popen[bytes], dict]:
    """``fedface-aggregator serve`` with ``options``, and its round 1 announce once open."""
    agg = serve_aggregator(state, url, *options)
    procs.append(agg)
    watcher.wait_for(announce_open, 30)
    return agg, watcher.announce()


def _assert_weighted_average(secret_ctx: FederationContext, blob: bytes,
                             vecs: list[np.ndarray], counts: list[int]) -> None:
    got = decrypt_result(secret_ctx, blob)
    assert np.max(np.abs(got - plain_weighted_average(vecs, counts))) < 1e-5


def test_kill_9_mid_round_then_restart_completes_with_every_acked_update(
    tmp_path: Path, mosquitto: MosquittoBroker, secret_ctx: FederationContext,
    procs: list[subprocess.Popen[bytes]],
) -> None:
    with _federation(tmp_path, mosquitto.url, secret_ctx, 3) as (state, boxes, watcher):
        vecs, counts = _vectors(7, len(boxes)), [150, 240, 330]
        agg, ann = _open_round(state, mosquitto.url, watcher, procs,
                               "--round-deadline", "120", "--quorum", "3", "--rounds", "1")
        for box, vec, n in zip(boxes[:2], vecs[:2], counts[:2], strict=True):
            send_update(box, ann, vec, n)
            acks = box.wait_acks(1, 30)
            assert acks and acks[0]["accepted"], acks
        agg.send_signal(signal.SIGKILL)
        first_out = agg.communicate(timeout=10)[0]
        # the third box sends while the aggregator is dead: its persistent session at the
        # broker queues the chunks for it
        send_update(boxes[2], ann, vecs[2], counts[2])
        time.sleep(0.5)
        agg2 = serve_aggregator(state, mosquitto.url, "--round-deadline", "120", "--quorum", "3",
                                "--rounds", "1")
        procs.append(agg2)
        out, _ = agg2.communicate(timeout=90)
        assert agg2.returncode == 0, out.decode()[-3000:]
        assert b"resumed round 1" in out and b"with 2 accepted update(s)" in out
        # no key material in the logs: the aggregator's own signing key never appears
        key_pem = (state / "aggregator.key").read_bytes()
        key_body = b"".join(key_pem.splitlines()[1:-1])
        assert key_body not in out and key_body not in first_out
        assert boxes[2].wait_acks(1, 10)[0]["accepted"]
        msgs = watcher.wait_for(result_complete, 30)
        pointer, blob = read_result(msgs)
        assert pointer["round"] == 1 and pointer["contributors"] == 3
        _assert_weighted_average(secret_ctx, blob, vecs, counts)


def test_silent_box_round_closes_at_the_deadline_with_quorum(
    tmp_path: Path, mosquitto: MosquittoBroker, secret_ctx: FederationContext,
    procs: list[subprocess.Popen[bytes]],
) -> None:
    with _federation(tmp_path, mosquitto.url, secret_ctx, 4) as (state, boxes, watcher):
        vecs, counts = _vectors(8, 3), [100, 200, 300]
        agg, ann = _open_round(state, mosquitto.url, watcher, procs,
                               "--round-deadline", "4", "--quorum", "3", "--rounds", "1")
        for box, vec, n in zip(boxes[:3], vecs, counts, strict=True):  # box3 stays silent
            send_update(box, ann, vec, n)
        for box in boxes[:3]:
            assert box.wait_acks(1, 30)[0]["accepted"]
        msgs = watcher.wait_for(result_complete, 30)
        closed_at = time.time()
        out, _ = agg.communicate(timeout=30)
        assert agg.returncode == 0, out.decode()[-3000:]
        assert closed_at >= ann["deadline"] - 0.5  # closed by the deadline, not before
        pointer, blob = read_result(msgs)
        assert pointer["contributors"] == 3
        assert b"deadline with quorum (3 update(s), quorum 3)" in out
        _assert_weighted_average(secret_ctx, blob, vecs, counts)
