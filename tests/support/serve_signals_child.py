"""``serve_until_signalled`` (kiosk serve, serve-api) in a process of its own, for the
tests that signal it: a hang there ignores every later SIGTERM and SIGINT, so it is
never risked in the test's process.

``python -m tests.support.serve_signals_child held-lock``: one server (starting and
stopping nothing), with SIGTERM then SIGINT raised in the main thread while it holds
the lock of the Event it waits on: where a handler that set that Event waited for
itself for ever. Says ``held-lock signals: N`` and ``stopped``.

``python -m tests.support.serve_signals_child bursts N``: N servers one after the
other, each saying ``up K`` once its handlers are in place and ``stopped K`` when it
stops; the test sends each a burst of two signals, then closes stdin to end it.

Either way a wait of more than ``HANG_S`` dumps every thread's stack to stderr and
exits 1 (faulthandler's own thread: it runs while the main thread is stuck on a lock).
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

import typer

from edge.cli.context import serve_until_signalled

HANG_S = 10.0


def held_lock() -> int:
    raised: list[str] = []
    to_raise = [signal.SIGTERM, signal.SIGINT]  # as `timeout`, then a Ctrl-C

    def in_event(frame: FrameType, event: str, _arg: Any) -> Any:
        event_obj = frame.f_locals.get("self")
        if (event == "line" and to_raise and isinstance(event_obj, threading.Event)
                and event_obj._cond._lock.locked()):
            raised.append(signal.Signals(to_raise[0]).name)
            signal.raise_signal(to_raise.pop(0))
        return in_event

    def calls(frame: FrameType, _event: str, _arg: Any) -> Any:
        waits = (frame.f_code is threading.Event.wait.__code__ and frame.f_back is not None
                 and frame.f_back.f_code is serve_until_signalled.__code__)
        return in_event if waits else None

    # a server whose wait never took the lock would otherwise wait for ever
    fallback = threading.Timer(2.0, lambda: os.kill(os.getpid(), signal.SIGTERM))
    fallback.daemon = True

    def start() -> None:
        fallback.start()
        sys.settrace(calls)  # the server's own wait, from here on

    def stop() -> None:
        sys.settrace(None)
        fallback.cancel()
        typer.echo(f"held-lock signals: {len(raised)}", err=True)
        typer.echo("stopped", err=True)

    faulthandler.dump_traceback_later(HANG_S, exit=True)
    serve_until_signalled(start, stop, lambda: "up")
    faulthandler.cancel_dump_traceback_later()
    return 0


def bursts(count: int) -> int:
    for k in range(count):
        faulthandler.dump_traceback_later(HANG_S, exit=True)
        serve_until_signalled(lambda: None, lambda k=k: typer.echo(f"stopped {k}", err=True),
                              lambda k=k: f"up {k}")
    faulthandler.cancel_dump_traceback_later()
    # the last burst's second signal may still be on its way: exiting now, Python would
    # put the default handlers back first and be killed by it. The test closes stdin.
    sys.stdin.read()
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["held-lock"]:
        return held_lock()
    if argv[:1] == ["bursts"] and len(argv) == 2:
        return bursts(int(argv[1]))
    sys.stderr.write("usage: python -m tests.support.serve_signals_child "
                     "held-lock | bursts N\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
