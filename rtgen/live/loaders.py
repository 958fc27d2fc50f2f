"""Slow work kept off the real-time thread: one loader thread for swaps, one reaper for what a swap retires.

:class:`BackgroundLoader` runs model and soundfont loads one at a time on a thread of its own, so two
swap requests never load at once (and never redirect stderr at once). Requests are keyed by kind: a
request waiting its turn is replaced by a newer one of the same kind, so after a burst of swaps only
the one being loaded and the latest are done. :meth:`BackgroundLoader.close` drops what waits and
waits for the running load (a C call cannot be interrupted).

:func:`retire` hands objects the real-time thread has stopped using (an old model and its binding) to
the reaper thread, which keeps them until it holds the last reference and then drops them, so their
teardown (onnxruntime sessions, about a millisecond each) runs there and not between two steps.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

Job = Callable[[], None]


@dataclass
class _Request:
    job: Job
    superseded: Job | None


class BackgroundLoader:
    """One worker thread for slow loads; per kind, a newer request replaces one still waiting.

    Args:
        name: the worker thread's name.
    """

    def __init__(self, name: str = "rtgen-loader") -> None:
        self.name = name
        self._cond = threading.Condition()
        self._waiting: dict[str, _Request] = {}  # kind -> the newest request not started yet (insertion order)
        self._thread: threading.Thread | None = None
        self._running: str | None = None
        self._closed = False
        self.superseded = 0  # requests replaced by a newer one before they started

    def submit(self, kind: str, job: Job, superseded: Job | None = None) -> None:
        """Run ``job`` on the loader thread after the running load.

        Args:
            kind: requests of one kind replace each other while waiting (``"model"``, ``"soundfont"``).
            job: the load; it reports its own result (exceptions are logged, never raised here).
            superseded: called (on the calling thread) if a newer request of ``kind`` replaces this one
                before it starts (not when :meth:`close` drops it).

        Raises:
            RuntimeError: the loader is closed.
        """
        with self._cond:
            if self._closed:
                raise RuntimeError("the loader is closed")
            old = self._waiting.pop(kind, None)
            self._waiting[kind] = _Request(job, superseded)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
                self._thread.start()
            self._cond.notify()
        if old is not None:
            self.superseded += 1
            _call(old.superseded)

    @property
    def busy(self) -> bool:
        """A load runs or waits."""
        with self._cond:
            return self._running is not None or bool(self._waiting)

    @property
    def running(self) -> str | None:
        """The kind of the load running now, or None."""
        with self._cond:
            return self._running

    @property
    def thread(self) -> threading.Thread | None:
        """The worker thread (None until the first request)."""
        return self._thread

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until nothing runs or waits; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._running is not None or self._waiting:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout: float = 30.0) -> bool:
        """Drop the waiting requests, wait for the running one and end the thread (idempotent).

        Returns:
            True when the thread has ended (False: a load still runs after ``timeout`` seconds).
        """
        with self._cond:
            self._closed = True
            self._waiting.clear()
            self._cond.notify_all()
        t = self._thread
        if t is None or t is threading.current_thread():
            return True
        t.join(timeout)
        if t.is_alive():
            log.warning("%s: a load still runs after %.0f s; leaving it", self.name, timeout)
            return False
        return True

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if self._closed:
                    self._running = None
                    self._cond.notify_all()
                    return
                kind = next(iter(self._waiting))
                req = self._waiting.pop(kind)
                self._running = kind
            _call(req.job)
            del req  # the job's references (a loaded model, a reply) go here, not with the next request
            with self._cond:
                self._running = None
                self._cond.notify_all()


def _call(fn: Job | None) -> None:
    if fn is None:
        return
    try:
        fn()
    except Exception:
        log.exception("background job %r failed", fn)


# --- the reaper ------------------------------------------------------------------------------------------

REAP_POLL_S = 0.005
REAP_GIVE_UP_S = 30.0
_reap_queue: queue.SimpleQueue[list[object]] = queue.SimpleQueue()
_reaper: threading.Thread | None = None
_reaper_lock = threading.Lock()
reaped = 0
"""Objects the reaper has let go (for tests and status)."""


def retire(*objects: object) -> None:
    """Hand objects the caller no longer uses to the reaper thread, which drops them last.

    Call it from the real-time thread instead of letting the last reference go there. The caller must
    drop its own references right after (it usually does: they were replaced). Cheap: one queue put.
    """
    global _reaper
    items = [o for o in objects if o is not None]
    if not items:
        return
    _reap_queue.put(items)
    if _reaper is None:
        with _reaper_lock:
            if _reaper is None:
                _reaper = threading.Thread(target=_reap, name="rtgen-reaper", daemon=True)
                _reaper.start()


def _reap() -> None:
    global reaped
    while True:
        held = _reap_queue.get()
        give_up = time.monotonic() + REAP_GIVE_UP_S
        while held:
            # three references are the list's, the loop variable's and getrefcount's argument; any more and
            # someone else (the engine, a step decided ahead) still holds it: letting go now would make that
            # holder, on its own thread, the one that frees it
            still = [obj for obj in held if sys.getrefcount(obj) > 3]
            reaped += len(held) - len(still)
            held = still  # the ones left out are freed here, on this thread
            if not held:
                break
            if time.monotonic() >= give_up:
                log.debug("reaper: %d object(s) still held by others after %.0f s", len(held), REAP_GIVE_UP_S)
                reaped += len(held)
                break
            time.sleep(REAP_POLL_S)
        del held
