"""An IP camera's URL carries its password (rtsp://admin:pass@cam/...): it must not reach a
log, an error, `doctor` or `status` output, which technicians paste into tickets. The
source still opens the real URL."""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge.cli import app
from edge.doctor import check_camera
from edge.vision.capture import open_source
from edge.vision.frame_source import SourceError, shown_uri

SECRET = "s3cret-Pa55"


@pytest.mark.parametrize(("uri", "shown"), [
    (f"rtsp://admin:{SECRET}@10.0.0.5:554/Streaming/101", "rtsp://admin:***@10.0.0.5:554/Streaming/101"),
    (f"rtsp://admin:{SECRET}@cam", "rtsp://admin:***@cam"),
    (f"rtsp://admin:p@ss:{SECRET}@cam/x", "rtsp://admin:***@cam/x"),  # '@' in the password
    (f"http://cam/video.cgi?user=admin&pwd={SECRET}&channel=1",
     "http://cam/video.cgi?user=admin&pwd=***&channel=1"),
    (f"https://cam/mjpeg?token={SECRET}", "https://cam/mjpeg?token=***"),
    (f"mqtts://box:{SECRET}@broker:8883", "mqtts://box:***@broker:8883"),
    ("rtsp://admin@cam/live", "rtsp://admin@cam/live"),  # a user alone is not a secret
    ("/dev/video0", "/dev/video0"),
    ("dir:frames?fps=5&loop=1", "dir:frames?fps=5&loop=1"),
    ("0", "0"),
])
def test_a_camera_url_is_shown_without_its_secrets(uri: str, shown: str) -> None:
    assert shown_uri(uri) == shown
    assert SECRET not in shown_uri(uri)


def _refused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again: a connection is refused


def test_a_stream_that_fails_names_it_without_the_password(caplog: pytest.LogCaptureFixture
                                                           ) -> None:
    uri = f"rtsp://admin:{SECRET}@127.0.0.1:{_refused_port()}/live"
    caplog.set_level(logging.DEBUG)
    source = open_source(uri)
    assert source.target == uri  # what FFmpeg is given: the real URL
    with pytest.raises(SourceError) as failed:
        source.open()
    assert "rtsp://admin:***@127.0.0.1" in str(failed.value), str(failed.value)
    assert SECRET not in str(failed.value) and SECRET not in failed.value.uri
    assert SECRET not in caplog.text
    check = check_camera(uri)
    assert not check.ok and "rtsp://admin:***@127.0.0.1" in check.detail, check.detail
    assert SECRET not in check.detail + check.hint


def test_status_shows_the_camera_and_events_without_secrets(tmp_path: Path) -> None:
    """`status` now also says where visit events go ([events]: helper-56 found it did
    not), with the camera and broker passwords left out."""
    data_dir = tmp_path / "box"
    data_dir.mkdir()
    (data_dir / "edge.toml").write_text(
        f'[box]\nmatch_threshold = 0.45\n\n[camera]\nsource = "rtsp://admin:{SECRET}@cam/1"\n\n'
        '[events]\nmqtt_url = "mqtt://127.0.0.1:1883"\nusername = "kiosk"\n')
    runner = CliRunner()
    text = runner.invoke(app, ["--data-dir", str(data_dir), "status"])
    assert text.exit_code == 0, text.output
    assert "camera      rtsp://admin:***@cam/1" in text.stdout, text.stdout
    from edge.cli.visit_outputs import host_id

    topics = f"fedface/local/{host_id()}/#"  # a box in no federation's (helper-61)
    assert f"events      mqtt://127.0.0.1:1883 {topics} (no face images)" in text.stdout, \
        text.stdout
    said = json.loads(runner.invoke(app, ["--data-dir", str(data_dir), "status",
                                          "--json"]).stdout)
    assert said["camera"] == "rtsp://admin:***@cam/1", said
    assert said["events"] == {"mqtt_url": "mqtt://127.0.0.1:1883", "username": "kiosk",
                              "include_crop": False, "topics": topics}, said
    assert SECRET not in text.output + json.dumps(said)
    (data_dir / "edge.toml").write_text("[box]\nmatch_threshold = 0.45\n")
    bare = runner.invoke(app, ["--data-dir", str(data_dir), "status"])
    assert "events      none (no [events] in the config: visits stay on the box)" in \
        bare.stdout, bare.stdout
