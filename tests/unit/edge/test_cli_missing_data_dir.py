"""helper-57: a mistyped ``--data-dir`` gave a plausible ``model status`` (the pretrained
model, nothing wrong) and ``status`` / ``people list`` an empty box, without a word that
the directory is not there. The reading commands now say so, first."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge.cli import app

WARNING = "does not exist, so what follows is an empty box's"


@pytest.mark.parametrize("command", [["status"], ["model", "status"], ["people", "list"],
                                     ["model", "status", "--json"]])
def test_a_data_dir_that_is_not_there_is_said(tmp_path: Path, command: list[str]) -> None:
    missing = tmp_path / "boxx"
    said = CliRunner().invoke(app, ["--data-dir", str(missing), *command])
    assert said.exit_code == 0, said.output
    assert f"warning: the data directory {missing} {WARNING}" in said.stderr, said.stderr
    assert WARNING not in said.stdout  # a script's JSON stays JSON
    present = tmp_path / "box"
    present.mkdir()
    quiet = CliRunner().invoke(app, ["--data-dir", str(present), *command])
    assert quiet.exit_code == 0 and WARNING not in quiet.stderr, quiet.stderr


def test_it_is_said_for_the_environment_variable_too(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDFACE_DATA_DIR", str(tmp_path / "typo"))
    said = CliRunner().invoke(app, ["model", "status"])
    assert f"the data directory {tmp_path / 'typo'} {WARNING}" in said.stderr, said.stderr
