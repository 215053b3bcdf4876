"""Typed config files: a bad entry is reported as key path + value + reason, unknown keys
are rejected, and the CLIs say so in one line with a non-zero exit code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aggregator.cli.main import app as aggregator_app
from aggregator.state.config import ConfigError as AggregatorConfigError
from aggregator.state.config import load_config
from edge.cli import app as edge_app
from edge.config import BoxConfig, ConfigError, load_box_config
from edge.provision import render_box_config

runner = CliRunner()

GOOD = """
[box]
device_id = "box-1"
fed = "fed-a"
data_dir = "/var/lib/fedface"
[camera]
source = "/dev/fedface-camera"
[broker]
url = "mqtts://broker.example:8883"
ca_file = "/var/lib/fedface/tls/ca.crt"
cert_file = "/var/lib/fedface/tls/device-tls.crt"
key_file = "/var/lib/fedface/tls/device-tls.key"
[federation]
key_id = "abc"
secret_context = "/var/lib/fedface/keys/federation-secret.tenseal"
device_key = "/var/lib/fedface/keys/device.key"
aggregator_key = "/var/lib/fedface/keys/aggregator.pub"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edge.toml"
    path.write_text(text)
    return path


EVENTS = """
[events]
mqtt_url = "mqtt://homeassistant.local:1883"
username = "kiosk"
password_file = "/var/lib/fedface/mqtt-password"
"""


def test_good_box_config_round_trips_with_every_key_documented(tmp_path: Path) -> None:
    without_events = load_box_config(write(tmp_path, GOOD))
    assert without_events.events is None  # optional: no MQTT events unless configured
    assert load_box_config(write(tmp_path, render_box_config(without_events))) == \
        without_events
    cfg = load_box_config(write(tmp_path, GOOD + EVENTS))
    assert cfg.events is not None and cfg.events.include_crop is False  # images stay home
    text = render_box_config(cfg)
    assert load_box_config(write(tmp_path, text)) == cfg
    for section in BoxConfig.model_fields:
        model = type(getattr(cfg, section))
        for name, field in model.model_fields.items():
            assert field.description, f"{section}.{name} is undocumented"
            assert f"# {field.description}" in text


@pytest.mark.parametrize(("old", "new", "expected"), [
    ('threads = 1', 'threads = 0', "box.threads = 0: Input should be greater than or equal to 1"),
    ('url = "mqtts://broker.example:8883"', 'url = "http://broker"',
     "broker.url = 'http://broker': String should match pattern"),
    ('device_id = "box-1"', 'device_id = "box/1"', "box.device_id = 'box/1'"),
])
def test_bad_value_names_key_path_value_and_reason(tmp_path: Path, old: str, new: str,
                                                   expected: str) -> None:
    text = GOOD.replace(old, new) if old in GOOD else GOOD.replace("[box]", f"[box]\n{new}")
    with pytest.raises(ConfigError) as err:
        load_box_config(write(tmp_path, text))
    assert expected in str(err.value)
    assert str(tmp_path / "edge.toml") in str(err.value)


def test_canary_margin_comes_from_the_config_file_else_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDFACE_CANARY_MARGIN", raising=False)
    assert load_box_config(write(tmp_path, GOOD)).settings().canary_margin == 0.02
    monkeypatch.setenv("FEDFACE_CANARY_MARGIN", "0.05")
    assert load_box_config(write(tmp_path, GOOD)).settings().canary_margin == 0.05
    text = GOOD.replace('key_id = "abc"', 'key_id = "abc"\ncanary_margin = 0.1')
    settings = load_box_config(write(tmp_path, text)).settings()
    assert settings.canary_margin == 0.1
    assert settings.canary_policy().margin == 0.1
    assert settings.canary_policy().threshold == settings.match_threshold
    with pytest.raises(ConfigError, match=r"federation\.canary_margin = 1\.5: Input should "
                       "be less than or equal to 1"):
        load_box_config(write(tmp_path, text.replace("0.1", "1.5")))


def test_unknown_and_missing_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"camera\.fps: unknown setting"):
        load_box_config(write(tmp_path, GOOD.replace("[camera]", "[camera]\nfps = 5")))
    # named alone: pydantic's "input" of a missing key is the whole enclosing section,
    # which the message printed as if it were the value
    with pytest.raises(ConfigError, match=r"federation\.key_id: missing \(required\)") as err:
        load_box_config(write(tmp_path, GOOD.replace('key_id = "abc"', "")))
    assert "{" not in str(err.value)


def test_edge_cli_reports_bad_config_in_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("threads = 1", "").replace(
        'fed = "fed-a"', 'fed = "fed-a"\nthreads = "many"'))
    r = runner.invoke(edge_app, ["status", "--config", str(path)])
    assert r.exit_code == 7
    assert "box.threads = 'many': Input should be a valid integer" in r.output
    assert "Traceback" not in r.output


def test_aggregator_config_json_is_typed(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "config.json").write_text(json.dumps(
        {"fed": "f1", "key_id": "k", "count_scale": -1, "quorum": 3}))
    with pytest.raises(AggregatorConfigError) as err:
        load_config(state)
    assert "count_scale = -1: Input should be greater than 0" in str(err.value)
    assert "quorum: unknown key" in str(err.value)
    r = runner.invoke(aggregator_app, ["rounds", "list", "--state", str(state)])
    assert r.exit_code == 2
    assert r.output.count("\n") == 1 and "count_scale = -1" in r.output
