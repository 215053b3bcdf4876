"""helper-57: a second `fedface-edge join` on one box (another terminal beside the
service) took the broker session from the first in turn, both printing 'connection
lost' for ever with no word of why. One join per box now: the second stops at once,
naming the first one's pid."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from edge.cli import app
from tests.support.lock_holder import lock_held_elsewhere


def test_a_second_join_on_one_box_stops_naming_the_first(tmp_path: Path) -> None:
    data_dir = tmp_path / "box"
    lock = data_dir / "federation" / "join.lock"
    lock.parent.mkdir(parents=True)
    files = []
    for name in ("federation-secret.tenseal", "device.key", "aggregator.pub"):
        (tmp_path / name).write_bytes(b"not read before the lock")
        files.append(str(tmp_path / name))
    join = ["--data-dir", str(data_dir), "join", "--broker", "mqtt://127.0.0.1:1",
            "--fed", "acme", "--device-id", "box-a", "--secret-context", files[0],
            "--device-key", files[1], "--aggregator-key", files[2]]
    with lock_held_elsewhere(lock) as first:  # as the running join holds it
        second = CliRunner().invoke(app, join)
        assert second.exit_code == 5, second.output
        assert f"another `fedface-edge join` (pid {first}) runs on this box " \
            f"({data_dir}): one per box" in second.output, second.output
        assert "sudo systemctl stop fedface-join" in second.output
    alone = CliRunner().invoke(app, join)  # the first one gone: on to its keys
    assert "another `fedface-edge join`" not in alone.output, alone.output
