"""SIGINT and SIGTERM stop the loop, however often and whenever they come.

The handler runs on the main thread, which is the real-time loop's, between any two bytecodes, possibly
while the loop holds the lock of its wake-up event: it only writes the signal number to a pipe. A helper
thread reads it and asks the loop to stop (which releases every note and writes the recording).

Before that, during start-up, :func:`on_startup_signal` unwinds the start-up with an exception and also
notes the signal: a library that imports an optional module under ``try: ... except ImportError`` can
swallow the exception (a C extension's import turns it into ImportError), and the start-up then goes on.
:meth:`SignalStop.catch` finds the noted signal and stops the loop as soon as it runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_startup_signals: list[int] = []


class Terminated(KeyboardInterrupt):
    """SIGTERM before a command took over signals: unwinds like Ctrl-C, so what was opened is closed."""

    signum = signal.SIGTERM


def on_startup_signal(signum: int, frame: object) -> None:
    """The SIGINT/SIGTERM handler until a command takes over: note the signal, then unwind the start-up.

    Raises:
        Terminated: for SIGTERM.
        KeyboardInterrupt: for SIGINT.
    """
    _startup_signals.append(signum)
    if signum == signal.SIGTERM:
        raise Terminated()
    raise KeyboardInterrupt()


def take_startup_signal() -> int | None:
    """The first signal :func:`on_startup_signal` saw and nobody handled yet (forgetting them all), or None."""
    first = _startup_signals[0] if _startup_signals else None
    _startup_signals.clear()
    return first


class SignalStop:
    """From :meth:`catch` until :meth:`release`, SIGINT and SIGTERM call ``stop`` once (on a helper thread).

    Args:
        stop: asks the loop to finish (it must be signal-safe: it only sets events).
    """

    def __init__(self, stop: Callable[[], None]) -> None:
        self._stop = stop
        self._fds: tuple[int, int] | None = None
        self._thread: threading.Thread | None = None
        self._previous: dict[int, Any] = {}

    def catch(self) -> None:
        """Install the handlers (the main thread only; elsewhere, or a second time, nothing happens)."""
        if threading.current_thread() is not threading.main_thread() or self._fds is not None:
            return
        r, w = os.pipe()
        os.set_blocking(w, False)
        self._fds = (r, w)
        self._thread = threading.Thread(target=self._read, args=(r,), name="rtgen-signals", daemon=True)
        self._thread.start()
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._on_signal)
        early = take_startup_signal()
        if early is not None:  # its exception was swallowed on the way (see the module docstring)
            log.info("%s came during start-up", signal.Signals(early).name)
            self._on_signal(early, None)

    def _on_signal(self, signum: int, frame: object) -> None:
        fds = self._fds
        if fds is not None:
            with contextlib.suppress(OSError):  # a full pipe: a stop is on its way already
                os.write(fds[1], bytes((signum,)))

    def _read(self, fd: int) -> None:
        stopping = False
        while True:
            try:
                data = os.read(fd, 64)
            except OSError:
                return
            for signum in data:
                if signum == 0:  # release() is done with us
                    return
                name = signal.Signals(signum).name
                if stopping:
                    log.info("%s again: already stopping", name)
                    continue
                stopping = True
                log.info("%s: stopping (every note released, the recording written)", name)
                self._stop()

    def release(self) -> None:
        """Put the previous handlers back and end the helper thread (idempotent)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
        fds = self._fds
        if fds is None:
            return
        with contextlib.suppress(OSError):
            os.write(fds[1], b"\0")
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None
        self._fds = None
        for fd in fds:
            os.close(fd)
