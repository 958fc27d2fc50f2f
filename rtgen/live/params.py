"""The params box: generation parameters swapped as one immutable value, never locked by the loop.

Other threads (OSC, the web page) set parameters with :meth:`ParamsBox.set`: a new frozen
:class:`~rtgen.generation.engine.Params` is made, its masks built on the caller's thread, then published
by one attribute assignment; the loop reads :attr:`ParamsBox.value` once per step. A change that starts on
the loop's own thread (a mapped CC) goes through :meth:`ParamsBox.set_later`, which hands the work to a
helper thread, so the loop never builds masks.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rtgen.generation.engine import Engine, Params

log = logging.getLogger(__name__)


class ParamsBox:
    """The parameters in force, with their masks prepared by ``engine`` before they are published.

    Args:
        engine: prepares a new value's masks (:meth:`~rtgen.generation.engine.Engine.prepare`).
        params: the initial value.
    """

    def __init__(self, engine: Engine, params: Params) -> None:
        self.engine = engine
        self.value = params  # read by the loop without a lock
        self._lock = threading.Lock()  # serialises the threads that set params (never the real-time one)
        self._changes: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None

    def set(self, **changes: Any) -> None:
        """Publish a new value with ``changes`` (read at the next step); not on the real-time thread."""
        with self._lock:
            params = dataclasses.replace(self.value, **changes)
            self.engine.prepare(params)
            self.value = params

    def set_later(self, **changes: Any) -> None:
        """:meth:`set` from the real-time thread: the work is handed to a helper thread."""
        self._changes.put(changes)
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._apply_changes, name="rtgen-params", daemon=True)
            self._worker.start()

    def _apply_changes(self) -> None:
        while True:
            changes = self._changes.get()
            while True:  # a fader sweep: only the latest value of each control matters
                try:
                    changes.update(self._changes.get_nowait())
                except queue.Empty:
                    break
            try:
                self.set(**changes)
            except Exception:  # a bad value must not kill the worker
                log.exception("could not apply %s", changes)
