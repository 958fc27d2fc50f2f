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
from collections.abc import Iterator


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
