"""The box's background work yields the CPU by default (edge.priority)."""

from __future__ import annotations

import os
import threading

import pytest

from edge.federated.client import ClientConfig
from edge.priority import DEFAULT_NICENESS, NICENESS_ENV, background_niceness, lower_thread_priority


def test_background_work_is_niced_by_default_and_the_setting_is_checked(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv(NICENESS_ENV)  # tests/conftest.py sets 0 for the suite
    assert background_niceness() == DEFAULT_NICENESS == 10
    assert ClientConfig("fed", "box").train_niceness == 10  # the training thread's
    monkeypatch.setenv(NICENESS_ENV, "3")
    assert background_niceness() == 3 and ClientConfig("f", "b").train_niceness == 3
    monkeypatch.setenv(NICENESS_ENV, "40")
    assert background_niceness() == 19  # nice's own range
    monkeypatch.setenv(NICENESS_ENV, "high")
    assert background_niceness() == 10 and "not a number" in caplog.text


def test_a_thread_lowers_only_its_own_priority() -> None:
    seen: list[int] = []

    def work() -> None:
        lower_thread_priority(7)
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert seen == [before + 7]  # the worker yields...
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before  # ...alone
