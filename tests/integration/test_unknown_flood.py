"""Issue 15, attack 4: a flood of chunk starts on made-up device topics (a broker without
ACLs) against ``fedface-aggregator serve`` as a real process on a real Mosquitto. No
ack for any of them, no row per message, a few log lines, and a registered box's acks
as quick as when it is quiet (``bench.attacks.unknown_flood`` is the full-size replay)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bench.rig.flood import HonestProbe, measure, wait_open
from federation.crypto.ckks import FederationContext, new_secret_context
from tests.support.aggregator_mqtt import COUNT_SCALE, FED, REPO, setup_federation
from tests.support.broker import MosquittoBroker

pytestmark = pytest.mark.mosquitto

FLOOD = 3000  # messages at least (CI-sized; the bench sends 10,000)
PROBES = 5
# Three busy processes (flooder, broker, aggregator) share two cores during the flood:
# below this many seconds a 2x ratio of two small medians is scheduling noise.
FLOOR = 0.25


@pytest.fixture
def aggregator(tmp_path: Path, mosquitto: MosquittoBroker
               ) -> Iterator[tuple[Path, Path, FederationContext, HonestProbe]]:
    secret = new_secret_context()
    state, boxes = setup_federation(tmp_path, secret, mosquitto.url, 1)
    box = boxes[0]
    box.transport.close()  # the probe below is the box on the wire
    log = tmp_path / "aggregator.log"
    with log.open("w") as out:  # quorum 2 with one box: round 1 stays open throughout
        proc = subprocess.Popen(
            [sys.executable, "-m", "aggregator.cli", "serve", "--state", str(state),
             "--broker", mosquitto.url, "--quorum", "2", "--round-deadline", "600",
             "--rounds", "1"], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    probe = None
    try:
        round_no, base = wait_open(mosquitto.url, FED, 60)
        vec = np.random.default_rng(3).normal(0, 0.4, 100_000).astype(np.float32)
        blob = box.encrypted_blob(vec, 120, COUNT_SCALE)  # ~2.4 MB: a real update's path
        probe = HonestProbe(mosquitto.url, FED, box.device_id, box.key, blob, round_no, base)
        yield state, log, secret, probe
    finally:
        if probe is not None:
            probe.close()
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_unknown_device_flood_gets_no_acks_no_rows_few_logs_and_honest_acks_stay_quick(
    aggregator: tuple[Path, Path, FederationContext, HonestProbe],
    mosquitto: MosquittoBroker,
) -> None:
    state, log, _, probe = aggregator
    fig = measure(mosquitto.url, FED, state, log, probe, count=50_000, min_count=FLOOD,
                  samples=PROBES, settle=20.0)
    print(f"flood of {fig.sent} in {fig.flood_seconds:.1f} s: {fig.counted} counted, "
          f"{fig.unknown_acks} acks, {fig.unknown_rows} rows, {fig.log_lines} log lines; "
          f"honest ack quiet {fig.quiet_median:.3f} s, during {fig.during_median:.3f} s "
          f"({len(fig.during)} probes)")
    assert fig.sent >= FLOOD
    # every message reached the aggregator and was counted there (so "no ack" below is
    # not "never arrived"): the counter is the one place the flood shows
    assert fig.counted == fig.sent, (fig.counted, fig.sent)
    assert fig.unknown_acks == 0
    # one summary row per 10 s report period at most (none if the flood was shorter)
    periods = 1 + int(fig.flood_seconds / 10) + 2
    assert fig.unknown_rows <= periods, fig.unknown_rows
    # the sampled lines (5 per period) and one summary line per period
    assert 1 <= fig.log_lines <= 6 * periods, log.read_text()[-3000:]
    assert fig.log_bytes < 10_000
    assert len(fig.during) >= 3, "too few honest updates were acked during the flood"
    limit = max(2 * fig.quiet_median, fig.quiet_median + FLOOR)
    assert fig.during_median <= limit, (fig.quiet, fig.during)
