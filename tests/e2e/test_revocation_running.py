"""`fedface-aggregator devices revoke` while `serve` runs takes effect at both layers:
the broker refuses new TLS connections of the box (CRL + SIGHUP) and cuts the one it
holds (dynamic-security; tests/integration/test_revocation_live.py shows the stolen-box case), the
box is told and stops, and the RUNNING aggregator closes the round without waiting for
it. (Its refusal of a revoked device's update, unknown_device, is in
tests/unit/aggregator/test_aggregator_rejects.py: no connection is left to send one over here.)"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.broker import MosquittoBroker
from tests.support.federation_rig import wait_for
from tests.support.provisioning import Federation, provision_box, start_federation
from tests.support.tls_round import TlsBox, aggregator_log, connects, serve, start_box, stop_process

pytestmark = pytest.mark.mosquitto


@pytest.fixture
def fed(tmp_path: Path, mosquitto_factory: Callable[..., MosquittoBroker]) -> Federation:
    return start_federation(tmp_path, mosquitto_factory)


@pytest.fixture
def boxes() -> Iterator[list[TlsBox]]:
    started: list[TlsBox] = []
    yield started
    for box in started:
        box.client.stop(timeout=5)


def test_revoke_during_serve_refused_by_broker_and_running_aggregator(
        fed: Federation, lfw_dir: Path, boxes: list[TlsBox]) -> None:
    camera = f"dir:{lfw_dir / 'Aaron_Peirsol'}"
    dirs = {d: provision_box(fed, d, camera) for d in ("box-keep", "box-lost")}
    proc = serve(fed, quorum=1, rounds=1, deadline=120)
    try:
        keep, lost = (start_box(dirs[d], open_gate=False) for d in ("box-keep", "box-lost"))
        boxes += [keep, lost]
        # both join round 1 (the announce lists both) and hold in training
        wait_for(lambda: keep.has("joined", 1) is not None and lost.has("joined", 1)
                 is not None, 30, f"both boxes to join round 1\n{aggregator_log(fed)}")
        assert lost.client.transport.connected

        code, out = fed.aggregator("devices", "revoke", "box-lost", "--state", str(fed.state))
        assert code == 0 and "SIGHUP sent to broker pid" in out, out
        # broker: a NEW connection with the revoked certificate is refused ...
        wait_for(lambda: not connects(lost.cfg, "box-lost-probe"), 10,
                 "the broker to refuse the revoked certificate")
        assert connects(keep.cfg, "box-keep-probe")  # ... the CRL did not lock out others
        # the box's live session is cut and the box was told: it stops for good
        assert "disconnected every session of box-lost" in out, out
        wait_for(lambda: lost.has("revoked", 0) is not None, 10, "box-lost to be told")
        wait_for(lambda: not lost.client.transport.connected, 10, "box-lost to be cut")
        lost.trainer.gate.set()  # it no longer sends anything

        # the round closes on the remaining active device, without waiting the deadline
        t0 = time.monotonic()
        keep.trainer.gate.set()
        wait_for(lambda: keep.client.version == "round-1", 30,
                 f"box-keep to apply round 1\n{aggregator_log(fed)}")
        assert time.monotonic() - t0 < 30
        proc.wait(30)  # --rounds 1: serve exits after publishing
        assert proc.returncode == 0, aggregator_log(fed)
    finally:
        stop_process(proc)
    info = json.loads(fed.aggregator("rounds", "show", "1", "--json", "--state",
                                     str(fed.state))[1])
    assert info["contributors"] == ["box-keep"]
    assert info["close_reason"] == "all active devices sent"
    status = json.loads(fed.aggregator("status", "--json", "--no-broker", "--state",
                                       str(fed.state))[1])
    assert status["counters"].get("rejected.unknown_device", 0) == 0  # it sent nothing
    assert status["devices"] == {"active": 1, "total": 2}
