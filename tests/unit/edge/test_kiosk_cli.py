"""``fedface-edge kiosk serve`` takes its frame source from the provisioned box config
(camera.source of FEDFACE_CONFIG or DATA_DIR/edge.toml) when ``--source`` is not given."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge.cli import app as cli_app
from edge.kiosk import KioskStartError

CONFIG = """
[box]
device_id = "box-1"
fed = "fed-a"
data_dir = "{data}"
[camera]
source = "{source}"
[broker]
url = "mqtts://broker.example:8883"
ca_file = "/x/ca.crt"
cert_file = "/x/device-tls.crt"
key_file = "/x/device-tls.key"
[federation]
key_id = "abc"
secret_context = "/x/federation-secret.tenseal"
device_key = "/x/device.key"
aggregator_key = "/x/aggregator.pub"
"""


def test_serve_defaults_to_the_configured_camera(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                 ) -> None:
    import edge.kiosk

    used: list[str] = []

    def fake_build(edge: object, settings: object, source_uri: str,
                   visit_sinks: object = ()) -> None:
        used.append(source_uri)
        raise KioskStartError("stopped by the test")

    monkeypatch.setattr(edge.kiosk, "build_kiosk", fake_build)
    monkeypatch.delenv("FEDFACE_CONFIG", raising=False)
    data = tmp_path / "box"
    data.mkdir()
    runner = CliRunner()
    serve = ["--data-dir", str(data), "kiosk", "serve"]

    missing = runner.invoke(cli_app, serve)
    assert missing.exit_code == 2 and used == []
    assert f"no --source given and no box config at {data / 'edge.toml'}" in missing.output
    assert "Traceback" not in missing.output

    (data / "edge.toml").write_text(CONFIG.format(data=data, source="/dev/fedface-camera"))
    result = runner.invoke(cli_app, serve)
    assert "stopped by the test" in result.output and used == ["/dev/fedface-camera"]
    result = runner.invoke(cli_app, [*serve, "--source", "dir:frames"])
    assert used[-1] == "dir:frames"  # an explicit --source wins

    elsewhere = tmp_path / "etc" / "edge.toml"
    elsewhere.parent.mkdir()
    elsewhere.write_text(CONFIG.format(data=data, source="rtsp://cam.local/stream"))
    monkeypatch.setenv("FEDFACE_CONFIG", str(elsewhere))
    runner.invoke(cli_app, serve)
    assert used[-1] == "rtsp://cam.local/stream"

    elsewhere.write_text("[camera]\nsource = 5\n")
    broken = runner.invoke(cli_app, serve)
    assert broken.exit_code == 7  # the config error, in one line
    assert str(elsewhere) in broken.output and "Traceback" not in broken.output
