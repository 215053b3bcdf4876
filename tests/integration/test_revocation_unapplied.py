"""A revocation the broker did not apply (helper-57): a second `mosquitto -d`, started by
mistake, failed ('Address already in use') and deleted the broker's pid file; `devices
revoke box-c` then marked it revoked but could not reload the broker, running it again
said only "already revoked", and box-c, still let in, joined and applied the next round.

On the real TLS-only Mosquitto of the provisioning rig and the real `serve` process:

- the failed reload names the fix (reload the broker, then `devices revoke` again); a
  stale pid file (another program's pid) is refused, not signalled;
- `serve` hears the revoked box say it is online and sends it the signed notice: the box
  records it and stops;
- `devices revoke box-c` again re-applies the CRL and the reload (exit 0) and the broker
  refuses box-c from then on, not the other box;
- a box that learnt of its revocation only from the broker's TLS alert fails doctor's
  certificate check and `status` does not say "certificate ok".
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from edge.config import load_box_config
from edge.federated.client import ClientEvent
from edge.federated.revocation import revocation_state
from tests.support.broker import MosquittoBroker
from tests.support.federation_rig import wait_for
from tests.support.provisioning import Federation, edge, provision_box, start_federation
from tests.support.tls_round import aggregator_log, connects, serve, start_client, stop_process

pytestmark = pytest.mark.mosquitto


def _broker_lost_its_pid_file(tmp_path: Path, lfw_dir: Path,
                              factory: Callable[..., MosquittoBroker], *boxes: str
                              ) -> tuple[Federation, list[Path], Path]:
    fed = start_federation(tmp_path, factory)
    camera = f"dir:{lfw_dir / 'Aaron_Peirsol'}"
    dirs = [provision_box(fed, d, camera) for d in boxes]
    pid_file = fed.root / "mosquitto.pid"
    pid_file.unlink()  # the second `mosquitto -d` removed it on its way out
    return fed, dirs, pid_file


def test_a_failed_reload_names_the_fix_and_revoke_again_applies_it(
        tmp_path: Path, lfw_dir: Path,
        mosquitto_factory: Callable[..., MosquittoBroker]) -> None:
    fed, (c_dir, a_dir), pid_file = _broker_lost_its_pid_file(
        tmp_path, lfw_dir, mosquitto_factory, "box-c", "box-a")
    c_cfg, a_cfg = (load_box_config(d / "edge.toml") for d in (c_dir, a_dir))
    assert fed.broker.proc is not None
    code, out = fed.aggregator("devices", "revoke", "box-c", "--state", str(fed.state))
    assert code == 2, out
    assert "box-c is revoked in the registry and the CRL, but the broker has NOT " \
           "reloaded the CRL, so box-c can still connect" in out, out
    assert "`pkill -HUP -x mosquitto`" in out and "systemctl reload mosquitto" in out, out
    assert "then run `fedface-aggregator devices revoke box-c` again" in out, out
    assert connects(c_cfg, "box-c-probe")  # the broker still lets it in

    # a stale pid file: another program's pid is not sent the SIGHUP
    pid_file.write_text(str(os.getpid()))
    code, out = fed.aggregator("devices", "revoke", "box-c", "--state", str(fed.state))
    assert code == 2 and f"{pid_file} is stale: process {os.getpid()} is" in out, out
    assert connects(c_cfg, "box-c-probe2")

    # the operator found the broker's pid: `devices revoke` again applies the rest
    pid_file.write_text(str(fed.broker.proc.pid))
    code, out = fed.aggregator("devices", "revoke", "box-c", "--state", str(fed.state))
    assert code == 0, out
    assert "box-c was already revoked at the aggregator: applying the rest again" in out, out
    assert f"SIGHUP sent to broker pid {fed.broker.proc.pid}" in out, out
    wait_for(lambda: not connects(c_cfg, "box-c-probe3"), 10, "the broker to refuse box-c")
    assert connects(a_cfg, "box-a-probe")


def test_serve_tells_a_revoked_box_the_broker_still_lets_in(
        tmp_path: Path, lfw_dir: Path,
        mosquitto_factory: Callable[..., MosquittoBroker]) -> None:
    fed, (c_dir, _), _ = _broker_lost_its_pid_file(
        tmp_path, lfw_dir, mosquitto_factory, "box-c", "box-a")
    code, out = fed.aggregator("devices", "revoke", "box-c", "--state", str(fed.state))
    assert code == 2, out  # the reload failed: box-c can still connect
    agg = serve(fed, quorum=2, rounds=1)
    events: list[ClientEvent] = []
    client, _, _ = start_client(c_dir, events, open_gate=False, reconnect_max_delay=1)
    try:
        wait_for(lambda: any(e.kind == "revoked" for e in events), 60,
                 f"box-c to hear from serve that it was revoked\n{aggregator_log(fed)}")
        recorded = revocation_state(c_dir)
        assert recorded is not None and recorded.source == "notice", recorded
        wait_for(lambda: not client.transport.connected, 10, "box-c to disconnect itself")
    finally:
        client.stop(timeout=5)
        stop_process(agg)
    assert not any(e.kind == "applied" for e in events)
    assert "revoked device box-c is connected to the broker" in aggregator_log(fed)


def test_a_box_the_broker_alone_says_is_revoked_fails_its_certificate_check(
        tmp_path: Path, lfw_dir: Path,
        mosquitto_factory: Callable[..., MosquittoBroker]) -> None:
    """Revoked while it was off, the box learns it from the broker's TLS alert only:
    doctor said `PASS certificate` beside `FAIL broker ... CERTIFICATE_REVOKED`, and
    `status` both `certificate ok` and `REVOKED`."""
    fed = start_federation(tmp_path, mosquitto_factory)
    e_dir = provision_box(fed, "box-e", f"dir:{lfw_dir / 'Aaron_Peirsol'}")
    code, out = fed.aggregator("devices", "revoke", "box-e", "--state", str(fed.state))
    assert code == 0, out
    code, said = edge(e_dir, "doctor")
    assert code != 0, said
    lines = {line.split()[1]: line for line in said.splitlines()
             if line.startswith(("PASS", "FAIL"))}
    assert lines["broker"].startswith("FAIL") and "revoked" in lines["broker"].lower(), said
    assert lines["certificate"].startswith("FAIL  certificate      REVOKED"), said
    recorded = revocation_state(e_dir)
    assert recorded is not None and recorded.source == "tls", recorded
    code, status = edge(e_dir, "status")
    assert code == 8, status
    assert "certificate ok" not in status and "certificate NOT OK: REVOKED" in status, status
