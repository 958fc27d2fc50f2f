"""Helpers around the native libraries rtgen loads (libasound, libjack, libfluidsynth)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator

log = logging.getLogger(__name__)


@contextlib.contextmanager
def captured_stderr(label: str = "native MIDI library") -> Iterator[list[str]]:
    """Capture what native libraries write to file descriptor 2 into a list of lines, logged at DEBUG.

    The C libraries print straight to fd 2 (ALSA probing, JACK without a server, FluidSynth
    audio drivers); without this, a one-line explanation of ours would come after a page of noise.
    """
    lines: list[str] = []
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        yield lines
        return
    # fd 2 is the whole process's: two threads redirecting it at once would leave it on a temporary file.
    # One capture at a time; a thread that finds another capturing goes uncaptured rather than wait for it
    # (a soundfont load can take half a second, and this may be the real-time thread)
    if not _capture_lock.acquire(blocking=False):
        yield lines
        return
    try:
        with _redirected(fd, lines, label):
            yield lines
    finally:
        _capture_lock.release()


_capture_lock = threading.RLock()


@contextlib.contextmanager
def _redirected(fd: int, lines: list[str], label: str) -> Iterator[None]:
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), fd)
        try:
            yield
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode(errors="replace")
            lines.extend(line for line in text.splitlines() if line.strip())
            if lines:
                log.debug("%s output: %s", label, " | ".join(lines))
