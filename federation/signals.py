"""SIGTERM and SIGINT handling for the box's and the aggregator's long-running commands
(``kiosk serve``, ``serve-api``, ``join``, the demo's boxes, ``fedface-aggregator serve``).

A Python signal handler runs in the main thread between two bytecodes, wherever that
thread is: also inside ``threading.Event.wait`` or ``set`` while it holds the Event's
lock, or inside an earlier handler that does. The handlers called ``Event.set()``: the
main thread then waited for a lock it held itself, for ever, and every later SIGTERM
ran the same handler into the same lock. ``kiosk serve`` hung after two signals close
together (``timeout``, a double Ctrl-C) and only kill -9 ended it. Logging and
``Queue.put`` take locks too. A burst could also leave the main thread parked in its
untimed wait with no handler run at all, until one more signal came: a handler needs
the main thread to run it, and a lock wait is not always woken for it.

So no handler here takes a lock, nor needs the main thread: CPython's own C-level
handler, in whichever thread the signal lands, writes its number to a pipe
(``signal.set_wakeup_fd``); the Python-level one does nothing; a thread reading that
pipe names the signal and sets the stop Event, as any thread may.

The handlers stay installed when the ``with`` block ends: a signal during the teardown
that follows is let pass, as it always was, rather than ending the process half way
through closing its files and links.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_QUIT = b"\0"  # no signal has number 0: the watcher's own "stop reading"


@contextmanager
def stop_on_signals(stop: threading.Event,
                    signums: tuple[int, ...] = STOP_SIGNALS) -> Iterator[list[str]]:
    """Within the block, each of ``signums`` that arrives is appended by name to the
    yielded list (the first is what stopped the command) and then sets ``stop``.
    Call it from the main thread (``signal`` raises ValueError elsewhere)."""
    names: list[str] = []
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)  # a C signal handler must never block on the pipe
    try:
        # the wakeup fd first: it raises ValueError off the main thread, before any
        # handler is replaced
        previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    except BaseException:
        os.close(read_fd)
        os.close(write_fd)
        raise
    watcher = threading.Thread(target=_watch, args=(read_fd, set(signums), names, stop),
                               name="signal-watcher", daemon=True)
    try:
        for signum in signums:
            signal.signal(signum, _let_the_watcher_act)
        watcher.start()
        yield names
    finally:
        signal.set_wakeup_fd(previous_fd)
        if watcher.is_alive():
            os.write(write_fd, _QUIT)
            watcher.join()
        os.close(read_fd)
        os.close(write_fd)


def _let_the_watcher_act(_signum: int, _frame: FrameType | None) -> None:
    """Installed so the signal does not end the process at once; the C-level handler
    has already told the watcher, and nothing here may take a lock."""


def _watch(read_fd: int, signums: set[int], names: list[str],
           stop: threading.Event) -> None:
    while True:
        got = os.read(read_fd, 64)
        for number in got:
            if number in signums:  # the pipe also hears signals other handlers catch
                names.append(signal.Signals(number).name)
                stop.set()
        if not got or _QUIT[0] in got:
            return
