"""Helpers around the native libraries rtgen loads (libasound, libjack, libfluidsynth)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
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
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), fd)
        try:
            yield lines
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode(errors="replace")
            lines.extend(line for line in text.splitlines() if line.strip())
            if lines:
                log.debug("%s output: %s", label, " | ".join(lines))
