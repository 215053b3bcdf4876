"""Stopping ``fedface-edge join`` (Ctrl-C, or the service manager's SIGTERM) while its
round's training runs, as a technician at a terminal does it: a real ``join`` process
with the torch trainer in its own child process, a real aggregator and Mosquitto.

It took about 16 s, silent, before (the exit waited for the training child to finish
its round). Now it says at once that it stops, ends the child, and exits within a few
seconds; the half-trained round is not sent (nothing sealed, nothing in the outbox)."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.support.federation_rig import Federation, wait_for

pytestmark = pytest.mark.mosquitto

STOP_WITHIN_S = 5.0  # SIGINT to exit; it was ~16 s


def _children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_stopping_join_while_it_trains_says_so_and_ends_the_training_at_once(
        tmp_path: Path, mosquitto, lfw_dir: Path, signum: signal.Signals) -> None:
    fed = Federation.create(tmp_path, mosquitto.url, ["box-cli"])
    data, join = fed.cli_box("box-cli", lfw_dir, people=4)
    lines: list[tuple[float, str]] = []
    proc = subprocess.Popen(join, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def read() -> None:
        for line in proc.stdout or []:
            lines.append((time.monotonic(), line.rstrip("\n")))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    said = lambda text: [t for t, line in lines if text in line]  # noqa: E731
    try:
        fed.start_aggregator(quorum=1, rounds=1)
        wait_for(lambda: bool(said("round 1: joined")), 120, "the CLI box to join round 1",
                 fed)
        # the round's training child is up (spawned, importing torch, then training)
        wait_for(lambda: bool(_children(proc.pid)), 30, "the training child")
        time.sleep(1.0)
        trainers = _children(proc.pid)
        asked = time.monotonic()
        proc.send_signal(signum)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        took = time.monotonic() - asked
        reader.join(5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        fed.stop()
    output = "\n".join(line for _, line in lines)
    print(f"{signum.name} to exit: {took:.1f} s")
    stopping = said("stopping:")
    assert stopping and stopping[0] - asked < 1.5, output  # said at once, before waiting
    assert took < STOP_WITHIN_S, f"{took:.1f} s\n{output}"
    assert proc.returncode == 0, output
    assert f"join stopped ({signum.name})" in output
    assert not [pid for pid in trainers if _alive(pid)], "the training child outlived join"
    # the half-trained round is not sent: nothing sealed, nothing left to send
    assert "round 1: submitted" not in output and "round 1: queued" not in output
    assert not list((data / "federation" / "outbox").glob("*.upd"))
    assert not list(data.rglob("crops-*.npz"))  # the round's crops (biometric) are gone
