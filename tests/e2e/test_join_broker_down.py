"""A technician runs ``fedface-edge join`` in a terminal and the broker goes down while
the round trains: the update is sealed and queued (outbox, MQTT client memory) and
goes out when the broker is back. ``join`` said "round 1: submitted" at once, and the
technician took it that the aggregator had it. Now it says "queued", then "sent" when
it goes out and "acked" when the aggregator has it; ``model status`` says queued too.
A real ``join`` process (torch trainer), a real aggregator and Mosquitto."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest

from tests.support.federation_rig import EDGE_CLI, Federation, wait_for
from tests.support.tls_round import stop_process

pytestmark = pytest.mark.mosquitto


@pytest.mark.slow
def test_join_says_queued_while_the_broker_is_down_then_sent_then_acked(
        tmp_path: Path, mosquitto, lfw_dir: Path) -> None:
    fed = Federation.create(tmp_path, mosquitto.url, ["box-cli"])
    data, join = fed.cli_box("box-cli", lfw_dir, people=4)
    lines: list[str] = []
    proc = subprocess.Popen(join, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    reader = threading.Thread(target=lambda: lines.extend(
        line.rstrip("\n") for line in proc.stdout or []), daemon=True)
    reader.start()
    said = lambda text: [i for i, line in enumerate(list(lines)) if text in line]  # noqa: E731
    try:
        fed.start_aggregator(quorum=1, rounds=1)
        wait_for(lambda: bool(said("round 1: joined")), 120, "the CLI box to join round 1",
                 fed)
        mosquitto.stop()  # while the round trains (its child is still importing torch)
        wait_for(lambda: bool(said("round 1: queued")), 120, "join to say it queued")
        status = subprocess.run([EDGE_CLI, "--data-dir", str(data), "model", "status"],
                                capture_output=True, text=True, check=True).stdout
        mosquitto.start()  # same port: the box reconnects and sends what it queued
        wait_for(lambda: bool(said("round 1: acked")), 120, "the aggregator's ack", fed)
    finally:
        stop_process(proc, 30)  # SIGTERM, as the service manager stops it
        reader.join(5)
        fed.stop()
    output = "\n".join(lines)
    assert not said("round 1: submitted"), output  # it never said sent while it was not
    queued = lines[said("round 1: queued")[0]]
    assert "queued; not sent yet, the broker is unreachable: it waits in the outbox and " \
        "goes out when the broker is back" in queued, output
    assert "round 1: queued (update of " in status and "the broker is unreachable" in status, \
        status
    sent, acked = said("round 1: sent ("), said("round 1: acked (")
    assert sent and acked and sent[0] < acked[0], output
    assert "after waiting in the outbox while the broker was unreachable" in lines[sent[0]]
    assert "the aggregator has this box's update" in lines[acked[0]]
    assert proc.returncode == 0, output
