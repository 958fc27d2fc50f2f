"""MIDI learn's file: the learned controller mapping saved to the user config, off the real-time thread.

The loop maps a learned CC live at once (:class:`~rtgen.input.tracker.PlayerTracker` swaps its mapping) and
hands the new ``[cc]`` value to :meth:`CcSaver.save`, which only puts it on a queue. The saver's thread
writes the newest value it has (:func:`rtgen.config.write_cc_table`: only ``[cc]`` rewritten, comments kept,
atomically); a burst of learns is one write.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from pathlib import Path

from rtgen.config import CcConfig, write_cc_table

log = logging.getLogger(__name__)


class CcSaver:
    """Writes learned ``[cc]`` mappings to ``path`` on a thread of its own.

    Args:
        path: the user config file (created if missing).
        on_error: called on the saver's thread with the reason when a write fails (e.g. ``/rtgen/error``).

    Attributes:
        written: mappings written so far.
        failed: writes that failed (logged and reported; the live mapping stays).
    """

    def __init__(self, path: Path, on_error: Callable[[str], None] | None = None) -> None:
        self.path = path
        self._on_error = on_error
        self._queue: queue.SimpleQueue[CcConfig | None] = queue.SimpleQueue()
        self.written = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name="rtgen-cc-saver", daemon=True)
        self._thread.start()

    def save(self, cc: CcConfig) -> None:
        """Queue ``cc`` to be written (safe on the real-time thread: one ``SimpleQueue.put``)."""
        self._queue.put(cc)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then end the thread (idempotent)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            closing = item is None
            while not self._queue.empty():  # only the newest mapping matters
                newer = self._queue.get_nowait()
                if newer is None:
                    closing = True
                else:
                    item = newer
            if item is not None:
                self._write(item)
            if closing:
                return

    def _write(self, cc: CcConfig) -> None:
        try:
            write_cc_table(self.path, cc)
        except Exception as err:
            self.failed += 1
            text = f"MIDI learn: cannot save the [cc] table to {self.path}: {err}"
            log.error("%s", text)
            if self._on_error is not None:
                self._on_error(text)
            return
        self.written += 1
        log.info("MIDI learn: [cc] saved to %s", self.path)
