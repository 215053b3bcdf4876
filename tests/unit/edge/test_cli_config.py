"""Box settings (env, validation messages) and the CLI's error-to-exit-code handler."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from edge.cli import COMMAND_MODULES, app
from edge.cli.context import BoxContext
from edge.cli.errors import EXIT_INTERNAL, FedFaceGroup
from edge.config import ConfigError, EdgeSettings
from edge.errors import FedFaceError


def test_settings_come_from_env_then_defaults(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    monkeypatch.setenv("FEDFACE_DATA_DIR", str(tmp_path / "from-env"))
    monkeypatch.setenv("FEDFACE_MODEL_DIR", str(tmp_path / "models"))
    settings = EdgeSettings()
    assert settings.data_dir == tmp_path / "from-env"
    assert settings.model_dir == tmp_path / "models"
    explicit = EdgeSettings.from_mapping({"data_dir": tmp_path / "cli", "threads": None})
    assert explicit.data_dir == tmp_path / "cli" and explicit.threads == 1
    monkeypatch.delenv("FEDFACE_DATA_DIR")
    monkeypatch.delenv("FEDFACE_MODEL_DIR")
    assert EdgeSettings().data_dir.name == "fedface" and EdgeSettings().model_dir is None


def test_the_installed_models_in_the_data_dir_are_found(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    """helper-58: the installer puts the models in <data dir>/models, and the docs say
    FEDFACE_DATA_DIR is all a command needs, but `doctor` looked in the technician's own
    user cache: `FAIL models ... missing from ~/.cache/fedface/models`."""
    from models.registry import PINNED, default_model_dir

    models = default_model_dir()  # the suite's verified models
    data_dir = tmp_path / "var-lib-fedface"
    (data_dir / "models").mkdir(parents=True)
    for pinned in PINNED.values():
        (data_dir / "models" / pinned.filename).symlink_to(models / pinned.filename)
    monkeypatch.delenv("FEDFACE_MODEL_DIR", raising=False)
    monkeypatch.setenv("FEDFACE_DATA_DIR", str(data_dir))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))  # not there
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    verified = CliRunner().invoke(app, ["models", "verify"])
    assert verified.exit_code == 0, verified.output
    assert str(data_dir / "models") in verified.output, verified.output
    # an explicit model dir still wins
    monkeypatch.setenv("FEDFACE_MODEL_DIR", str(tmp_path / "elsewhere"))
    elsewhere = CliRunner().invoke(app, ["models", "verify"])
    assert elsewhere.exit_code != 0 and str(tmp_path / "elsewhere") in elsewhere.output, \
        elsewhere.output
    # doctor says the fix once, on its hint line (the FAIL line repeated it: helper-58)
    doctor = CliRunner().invoke(app, ["doctor"])
    (fail,) = [line for line in doctor.stdout.splitlines() if line.startswith("FAIL  models")]
    assert "is missing from" in fail and "models fetch" not in fail, fail
    assert doctor.stdout.count("models fetch") == 2, doctor.stdout  # online and --bundle


def test_invalid_settings_name_key_value_and_reason() -> None:
    with pytest.raises(ConfigError) as caught:
        EdgeSettings.from_mapping({"match_threshold": 2, "colour": "red", "threads": "many"},
                                  source="box.toml")
    message = str(caught.value)
    assert message.startswith("invalid box.toml: ")
    assert "match_threshold = 2: Input should be less than or equal to 1" in message
    assert "colour: unknown setting" in message
    assert "threads = 'many'" in message


def test_every_setting_is_described() -> None:
    for name, field in EdgeSettings.model_fields.items():
        assert field.description and len(field.description) > 20, name


def test_data_dir_from_env_reaches_the_commands(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["status", "--json"],
                                env={"FEDFACE_DATA_DIR": str(tmp_path / "envbox")})
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["data_dir"] == str(tmp_path / "envbox")


class ProvisioningError(FedFaceError):
    exit_code = 9  # what a later component's error declares


def handler_app() -> typer.Typer:
    """A tiny app on the same root group, as a later command module would see it."""
    test_app = typer.Typer(cls=FedFaceGroup)

    @test_app.callback()
    def root(ctx: typer.Context, debug: bool = False) -> None:
        ctx.obj = BoxContext(EdgeSettings(), debug=debug)

    @test_app.command()
    def provision() -> None:
        raise ProvisioningError("broker unreachable", "check the broker address")

    @test_app.command()
    def crash() -> None:
        raise RuntimeError("bug")

    return test_app


def test_handler_maps_declared_exit_codes_and_hides_tracebacks() -> None:
    runner = CliRunner()
    declared = runner.invoke(handler_app(), ["provision"])
    assert declared.exit_code == 9
    assert declared.stderr.splitlines() == ["error: broker unreachable",
                                            "hint: check the broker address"]
    bug = runner.invoke(handler_app(), ["crash"])
    assert bug.exit_code == EXIT_INTERNAL and "Traceback" not in bug.output
    assert "error: internal error: RuntimeError: bug" in bug.stderr
    debug = runner.invoke(handler_app(), ["--debug", "crash"])
    # --debug shows the traceback and keeps the exit code (it used to end every run with 1)
    assert debug.exit_code == EXIT_INTERNAL and "Traceback" in debug.stderr
    assert "RuntimeError: bug" in debug.stderr
    declared_debug = runner.invoke(handler_app(), ["--debug", "provision"])
    assert declared_debug.exit_code == 9 and "Traceback" in declared_debug.stderr


def test_command_modules_are_registered() -> None:
    names = {c.name for c in typer.main.get_command(app).commands.values()}  # type: ignore[attr-defined]
    assert names >= {"models", "enroll", "people", "identify", "run", "bench"}
    assert len(COMMAND_MODULES) == len(set(COMMAND_MODULES))


def test_help_lists_every_exit_code_the_box_can_end_with() -> None:
    """Issue 13.10: the help left out 9 and 10. Every exit code declared in the package
    (an ``exit_code = N`` attribute or an ``EXIT_*`` constant) is listed in --help."""
    import re

    from edge.cli.errors import EXIT_CODES

    declared: set[int] = set()
    for path in (Path(__file__).resolve().parents[3] / "edge").rglob("*.py"):
        text = path.read_text()
        declared |= {int(n) for n in re.findall(r"\bexit_code = (\d+)", text)}
        declared |= {int(n) for n in re.findall(r"\bEXIT_[A-Z_]+ = (\d+)", text)}
    assert declared and declared <= set(EXIT_CODES), declared - set(EXIT_CODES)
    out = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "300"}).output
    flat = " ".join(out.split())
    for code, what in EXIT_CODES.items():
        assert f"{code} {' '.join(what.split())}" in flat, (code, flat[-600:])


def test_a_full_disk_and_an_unusable_key_file_are_user_errors() -> None:
    """join on a full disk said 'internal error ... report it' (exit 1, restarted for
    ever by systemd), as did a truncated secret context."""
    import errno

    from edge.cli.errors import EXIT_CONFIG, EXIT_GALLERY, _as_user_error, _user_error_code
    from federation.errors import KeyFileError

    full = _as_user_error(OSError(errno.ENOSPC, "No space left on device",
                                  "/data/models/tail-x.onnx"))
    assert _user_error_code(full) == EXIT_GALLERY
    assert "no space left" in str(full) and "df -h /data/models" in str(full.hint)  # type: ignore[attr-defined]
    key = _as_user_error(KeyFileError("malformed", "secret context truncated"))
    assert _user_error_code(key) == EXIT_CONFIG and "provision --bundle" in str(key.hint)  # type: ignore[attr-defined]
    other = ValueError("a bug")
    assert _as_user_error(other) is other and _user_error_code(other) is None


def test_the_gallery_hint_fits_the_failure(tmp_path: Path) -> None:
    import errno
    import sqlite3

    from edge.gallery.files import DAMAGED_GALLERY, data_dir_hint

    assert "is full" in data_dir_hint(tmp_path, sqlite3.OperationalError(
        "database or disk is full"))
    assert "is full" in data_dir_hint(tmp_path, OSError(errno.ENOSPC, "No space"))
    assert data_dir_hint(tmp_path, sqlite3.DatabaseError(
        "database disk image is malformed")) == DAMAGED_GALLERY
    assert "writable data directory" in data_dir_hint(tmp_path, PermissionError(
        errno.EACCES, "Permission denied"))


def test_a_full_disk_reported_as_an_io_error_gets_the_full_disk_hint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite says 'disk I/O error' when a full disk leaves no room for its journal: the
    hint said to choose a writable data directory, and doctor called the gallery damaged
    (move it aside and enrol again: destructive advice for a full disk)."""
    import sqlite3

    import edge.gallery.files as files

    io_error = sqlite3.OperationalError("disk I/O error")
    assert "writable data directory" in files.data_dir_hint(tmp_path, io_error)
    monkeypatch.setattr(files, "disk_full", lambda path: True)
    hint = files.data_dir_hint(tmp_path, io_error)
    assert "is full" in hint and hint != files.DAMAGED_GALLERY


def test_join_says_which_key_replaced_which(capsys: pytest.CaptureFixture[str]) -> None:
    """helper-42: a rotation showed in join's output as a bare `key_epoch` line."""
    from edge.cli.federate import _echo_event
    from edge.federated.api import ClientEvent

    _echo_event(ClientEvent("key_epoch", 0, {"key_id": "199e", "epoch": 1, "previous": "e1c9"}))
    assert capsys.readouterr().out == "key_epoch (installed key 199e (epoch 1), replacing e1c9)\n"
