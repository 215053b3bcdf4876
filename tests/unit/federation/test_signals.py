"""federation.signals: a stop signal is named and sets the Event from a thread of its
own (no handler takes a lock); the block leaves no pipe, thread or wakeup fd behind.

These run in the test's own process, whose handlers each test puts back: the product's
stay installed on purpose (a late signal is let pass during a command's teardown)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from federation.signals import STOP_SIGNALS, stop_on_signals


@pytest.fixture
def own_handlers() -> Iterator[None]:
    saved = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_each_signal_is_named_and_sets_stop(own_handlers: None) -> None:
    fds, stop = open_fds(), threading.Event()
    with stop_on_signals(stop) as names:
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)
        signal.raise_signal(signal.SIGINT)
        assert stop.wait(5)
        assert names == ["SIGINT"]  # named before stop is set: a waiter reads it at once
        signal.raise_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while len(names) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert names == ["SIGINT", "SIGTERM"]
    assert signal.set_wakeup_fd(-1) == -1  # the one before (none) is back
    assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)
    signal.raise_signal(signal.SIGTERM)  # after the block: let pass, not the end
    time.sleep(0.1)
    assert names == ["SIGINT", "SIGTERM"]
    assert not any(t.name == "signal-watcher" for t in threading.enumerate())
    assert open_fds() == fds


def test_other_signals_are_not_a_stop(own_handlers: None) -> None:
    stop = threading.Event()
    previous = signal.signal(signal.SIGUSR1, lambda *_: None)  # its byte reaches the pipe
    try:
        with stop_on_signals(stop, (signal.SIGTERM,)) as names:
            signal.raise_signal(signal.SIGUSR1)
            assert not stop.wait(0.3)
            assert names == []
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_off_the_main_thread_it_refuses_and_leaves_nothing_open() -> None:
    fds, failed, handler = open_fds(), [], signal.getsignal(signal.SIGTERM)

    def enter() -> None:
        try:
            with stop_on_signals(threading.Event()):
                pass
        except ValueError as exc:
            failed.append(exc)

    thread = threading.Thread(target=enter)
    thread.start()
    thread.join()
    assert failed and open_fds() == fds
    assert signal.getsignal(signal.SIGTERM) == handler  # nothing replaced
