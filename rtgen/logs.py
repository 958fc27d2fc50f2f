"""Logging that never blocks the real-time thread.

While the daemon plays, :func:`off_thread` puts the root logger's handlers behind a queue: a log
call on the real-time thread only appends the record, and a listener thread formats and writes
it (stderr, a JSON stream, a file). Records keep their arguments unformatted until then.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import queue
import time
from collections.abc import Iterator
from typing import Any


class _DeferredHandler(logging.handlers.QueueHandler):
    """A queue handler that leaves formatting (and the traceback) to the listener's thread."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


@contextlib.contextmanager
def off_thread() -> Iterator[None]:
    """Route the root logger through a queue and a listener thread for the duration (re-entrant safe).

    On exit every queued record is written and the original handlers are back.
    """
    root = logging.getLogger()
    handlers = list(root.handlers)
    if not handlers or any(isinstance(h, _DeferredHandler) for h in handlers):
        yield
        return
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, *handlers, respect_handler_level=True)
    deferred = _DeferredHandler(records)
    for h in handlers:
        root.removeHandler(h)
    root.addHandler(deferred)
    listener.start()
    try:
        yield
    finally:
        root.removeHandler(deferred)
        listener.stop()  # writes what is still queued
        for h in handlers:
            root.addHandler(h)


class Folded:
    """Warnings a flood could repeat, folded: at most one line per ``interval_s``; the next line written says how
    many were held back (``... (41 more suppressed)``). Not thread-safe: one per thread that warns.

    Args:
        logger: where the lines go.
        interval_s: the least time between two lines.
    """

    def __init__(self, logger: logging.Logger, interval_s: float = 1.0) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._last = -interval_s
        self._suppressed = 0

    def warning(self, msg: str, *args: Any) -> None:
        """Log ``msg % args`` as a warning unless one was written less than ``interval_s`` ago."""
        now = time.monotonic()
        if now - self._last < self.interval_s:
            self._suppressed += 1
            return
        extra = f" ({self._suppressed} more suppressed)" if self._suppressed else ""
        self.logger.warning(msg + "%s", *args, extra)
        self._last = now
        self._suppressed = 0
