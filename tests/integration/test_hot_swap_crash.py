"""Crash safety: a box killed (SIGKILL) right after each step of a swap restarts serving
one consistent model: pointer, engine and gallery rows all of the same version."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edge.serving.hot_swap import CRASH_ENV, STEPS
from edge.serving.versions import SwapStore
from tests.support.hot_swap import copy_box, open_swapper

REPO = Path(__file__).resolve().parents[2]



def run_child(data_dir: Path, version: str, crash_after: str | None) -> int:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(CRASH_ENV, None)
    if crash_after:
        env[CRASH_ENV] = crash_after
    proc = subprocess.run([sys.executable, "-m", "tests.support.hot_swap_child", str(data_dir),
                           version, "7"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    if crash_after is None:
        assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.returncode


def assert_consistent(data_dir: Path, expected: str) -> None:
    swapper = open_swapper(data_dir)  # the restart
    try:
        state = swapper.engine.state
        pointer = SwapStore(data_dir / "models").load()
        served = pointer.current.version if pointer else "base"
        assert state.model_version == served == expected
        assert state.embedder.version == state.gallery.model_version == state.tag
        crops = swapper.rows.crops()  # type: ignore[union-attr]
        assert swapper.rows.versions() == {state.tag: len(crops)}  # type: ignore[union-attr]
        assert len(state.gallery) == len(crops)
        files = sorted(p.name for p in (data_dir / "models").glob("sface-fed-*"))
        kept = {m.model_file for m in ((pointer.current, pointer.previous) if pointer else ())
                if m is not None and m.model_file}
        assert files == sorted(kept)  # N and N-1 only: no file of an unfinished swap
        assert (expected == "base") == (f"sface-fed-{expected}.weights.npz" not in files)
        assert not list((data_dir / "models").glob(".*.tmp"))
    finally:
        swapper.engine.close()


@pytest.mark.slow
def test_killed_after_each_step_restarts_consistent(template: Path, tmp_path: Path) -> None:
    committed_at = STEPS.index("committed")
    for k, step in enumerate(STEPS):
        box = copy_box(template, tmp_path / f"box-{step}")
        code = run_child(box, "r1", crash_after=step)
        assert code == -signal.SIGKILL, f"the child was not killed after {step}"
        assert_consistent(box, "r1" if k >= committed_at else "base")


def test_kill_during_a_second_swap_keeps_the_first(template: Path, tmp_path: Path) -> None:
    box = copy_box(template, tmp_path / "box")
    run_child(box, "r1", crash_after=None)
    assert_consistent(box, "r1")
    assert run_child(box, "r2", crash_after="rows_written") == -signal.SIGKILL
    assert_consistent(box, "r1")  # rows of r2 existed, the pointer never named it
    assert run_child(box, "r2", crash_after="committed") == -signal.SIGKILL
    assert_consistent(box, "r2")
    assert SwapStore(box / "models").load().previous.version == "r1"  # type: ignore[union-attr]
